"""The error type of problems a user can fix: a missing file or folder, a bad flag combination, a
checkpoint that does not fit, an empty split.

Library code raises `UserError` (or a subclass) for these; entry points print its message as one
line, `<command>: error: <message>`, and exit with status 2. Any other exception is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, flags or files, explained by the message."""
