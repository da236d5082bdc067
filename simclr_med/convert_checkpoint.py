"""`python -m simclr_med.convert_checkpoint`, as documented: the command itself is `cli/convert_checkpoint.py`.

Kept so the command users type still works; it imports nothing from the library.
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("cli.convert_checkpoint", run_name="__main__", alter_sys=True)
