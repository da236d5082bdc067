"""The paper's comparison (`python -m simclr_med.experiment`), above the stages: `plan` (arms,
grid, cells, budget), `runner` (drives the stages), `paired` (paired bootstrap differences),
`results` (results.csv from the saved predictions) and `summary` (summary.md, plots)."""
