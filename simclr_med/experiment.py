"""`python -m simclr_med.experiment`, as documented: the command itself is `cli/experiment.py`.

Kept so the command users type still works; it imports nothing from the library.
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("cli.experiment", run_name="__main__", alter_sys=True)
