"""Command lines other than `run.py`: `convert_checkpoint`, `make_synthetic` and `predict`.

Each module turns its flags (`flags/`) into plain arguments and calls the library; nothing in
`simclr_med` imports from here. Users type them as `python -m simclr_med.<command>` (thin shims
in `simclr_med/`) or `python -m cli.<command>`.
"""
