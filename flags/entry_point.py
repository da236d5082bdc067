"""How every command starts and ends: TensorFlow's C++ start-up notices hidden, flags parsed, and
a user error told in one line, `<command>: error: <message>` on stderr, with exit status 2.

    from flags import entry_point

    if __name__ == "__main__":  # before the module's other imports load TensorFlow
        entry_point.import_tensorflow_quietly()
    ...
    if __name__ == "__main__":
        entry_point.run(main)

(The guard keeps a module that is also a library, such as `data_prep.build`, from changing a
program's stderr when it is imported; bench scripts, never imported, call it unguarded.)

User errors are `simclr_med.errors.UserError` (and its subclasses), absl's flag errors (an unknown
flag, a bad enum value, a missing required flag) and `app.UsageError`. Every other exception is a
bug and keeps its traceback; `--verbosity=1` shows the traceback of a user error too.

A flags module turns its flags into a config dataclass through a `ConfigFlags`: every field is
read from the flag of its name (or the one `flag_names` gives), and a field without a flag is an
error (`MissingFlagError`, naming the dataclass and the field) when the command starts, before
`main` runs, not a field silently left at its default; a field that is deliberately no flag is
listed in `not_flags`, with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from typing import Any, Callable, Mapping, NoReturn, TypeVar

from absl import app, flags

from simclr_med.errors import UserError

FLAGS = flags.FLAGS

USER_ERRORS = (UserError, app.UsageError, flags.Error)
EXIT_USER_ERROR = 2

TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_TF_LOG_LEVEL = "1"  # hides C++ INFO messages; warnings and errors stay

# Messages TensorFlow's libraries log while they load, before absl logging is initialised, reach
# stderr whatever TF_CPP_MIN_LOG_LEVEL says (TensorFlow 2.21's oneDNN notice, twice): the banner
# absl prints before them, and INFO lines ("I0000 00:00:<time> <thread> <file>:<line>] ...").
_PRE_INIT_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
_INFO_LINE = re.compile(r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")

Config = TypeVar("Config")


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its C++ start-up notices, unless the user has set
    TF_CPP_MIN_LOG_LEVEL (then TensorFlow logs as it always does).

    Sets TF_CPP_MIN_LOG_LEVEL=1, which hides INFO messages logged after start-up (such as the
    cpu_feature_guard notice), and filters the INFO lines logged while TensorFlow loads out of
    what it writes to stderr; everything else written meanwhile is passed on.
    """
    if TF_LOG_LEVEL in os.environ:
        return
    os.environ[TF_LOG_LEVEL] = DEFAULT_TF_LOG_LEVEL
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        stderr = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(stderr, 2)
            os.close(stderr)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not is_start_up_notice(line)))


def is_start_up_notice(line: str) -> bool:
    """Whether a line of stderr is an INFO message (or the banner) of TensorFlow's start-up."""
    return line.startswith(_PRE_INIT_BANNER) or bool(_INFO_LINE.match(line))


def run(main: Callable[..., object], takes_args: bool = False) -> NoReturn:
    """Parses the flags and calls `main()` (`main(args)` with the positional arguments if
    `takes_args`); a user error ends the process with one line on stderr and exit status 2."""
    app.run(lambda argv: _call(main, argv[1:], takes_args), flags_parser=_parse_flags)


def from_flags(make_config: Callable[..., Config], *args, **kwargs) -> Config:
    """`make_config(*args, **kwargs)` of flag values: a value the config refuses (ValueError) is
    the user's error."""
    try:
        return make_config(*args, **kwargs)
    except ValueError as error:
        raise UserError(str(error)) from error


class MissingFlagError(LookupError):
    """A config field that no flag sets: a bug of the flags module (define the flag, or list the
    field in `not_flags` with the reason), never the user's error."""


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """How the flags make one config dataclass.

    `flag_names`: fields whose flag has another name (the others: the field's name).
    `not_flags`: fields that no flag sets, each with the reason (the caller passes them).
    `preset_defaults`: the flags default to None and a preset decides the values (augmentation),
    so their defaults are not the fields' defaults.
    Every instance is registered: `check_config_flags` (run by `run` before `main`) checks them.
    """

    config_class: type
    flag_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    not_flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    preset_defaults: bool = False

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted((set(self.flag_names) | set(self.not_flags)) - fields)
        if unknown:
            raise ValueError(f"{self.config_class.__name__} has no fields {unknown}")
        _CONFIG_FLAGS.append(self)

    def flag_name(self, field: str) -> str:
        return self.flag_names.get(field, field)

    def missing(self, flag_values: flags.FlagValues = FLAGS) -> list[str]:
        """`<Class>.<field> (--<flag>)` of every field that needs a flag and has none."""
        return [f"{self.config_class.__name__}.{f.name} (--{self.flag_name(f.name)})"
                for f in dataclasses.fields(self.config_class)
                if f.name not in self.not_flags and self.flag_name(f.name) not in flag_values]

    def values(self, flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
        """{field: its flag's value} of every field but the `not_flags`."""
        _raise_if_missing(self.missing(flag_values))
        return {f.name: flag_values[self.flag_name(f.name)].value
                for f in dataclasses.fields(self.config_class) if f.name not in self.not_flags}

    def build(self, flag_values: flags.FlagValues = FLAGS, **not_flag_values: Any) -> Any:
        """The config of the flags' values (and of `not_flag_values` for the `not_flags`, or to
        replace a flag's value); a value the config refuses is the user's error."""
        return from_flags(self.config_class, **{**self.values(flag_values), **not_flag_values})


_CONFIG_FLAGS: list[ConfigFlags] = []


def config_flags() -> list[ConfigFlags]:
    """Every `ConfigFlags` of the flags modules imported so far."""
    return list(_CONFIG_FLAGS)


def check_config_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Raises `MissingFlagError` naming every config field of the imported flags modules that
    has no flag."""
    _raise_if_missing([name for config in _CONFIG_FLAGS for name in config.missing(flag_values)])


def _raise_if_missing(missing: list[str]) -> None:
    if missing:
        raise MissingFlagError(
            f"config field(s) without a flag: {', '.join(missing)}; define the flag, or list the "
            "field in the ConfigFlags' not_flags with the reason")


def command_name() -> str:
    """How the user started this process: `data_prep.build` for `python -m data_prep.build`,
    `run.py` for `python run.py`, `simclr_med.predict` also when that shim hands over to
    `cli.predict`."""
    typed = sys.orig_argv
    if "-m" in typed[:-1]:
        return typed[typed.index("-m") + 1]
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _exit(error)


def _call(main: Callable[..., object], args: list[str], takes_args: bool) -> object:
    check_config_flags()  # a bug, not the user's error: outside the try, with its traceback
    try:
        if takes_args:
            return main(args)
        if args:
            raise UserError(f"unexpected arguments: {' '.join(args)}")
        return main()
    except USER_ERRORS as error:
        if FLAGS.verbosity >= 1:
            raise
        _exit(error)


def _exit(error: Exception) -> NoReturn:
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    sys.stderr.write(f"{command_name()}: error: {message or type(error).__name__}\n")
    sys.exit(EXIT_USER_ERROR)
