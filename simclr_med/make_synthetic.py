"""`python -m simclr_med.make_synthetic`, as documented: the command itself is `cli/make_synthetic.py`.

Kept so the command users type still works; it imports nothing from the library.
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("cli.make_synthetic", run_name="__main__", alter_sys=True)
