"""What every side-by-side benchmark shares: settings as `key=value,...` text, one measurement per
fresh process (its peak memory its own, optionally pinned to some cores), and rounds that
alternate the measurements (A B A B, not A A B B) so that a shared machine's drift reaches every
setting alike; medians and ranges over the rounds."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Callable, Optional, Type, TypeVar

import machine  # bench/machine.py, beside this module
from simclr_med.errors import UserError

S = TypeVar("S")


def parse_setting(cls: Type[S], text: str) -> S:
    """`cls(**fields)` from `key=value,...`, each value of the type of the field's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise UserError(f"--setting={text}: expected key=value with a key among "
                            f"{', '.join(defaults)}, got {item!r}")
        kind = type(defaults[key])
        try:
            values[key] = kind(value)
        except ValueError:
            article = "an" if kind is int else "a"
            raise UserError(f"--setting={text}: {key} must be {article} {kind.__name__}, "
                            f"got {value!r}")
    return cls(**values)


def label(setting, always: tuple[str, ...]) -> str:
    """`key=value` of the fields in `always` and of those that differ from their default."""
    default = type(setting)()
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in dataclasses.asdict(setting).items()
                    if k in always or v != getattr(default, k))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def run_child(script: str, job: dict, cores: Optional[int] = None) -> dict:
    """`script --child=<job>` in a fresh process (on the first `cores` CPUs of this process's
    affinity, when given: TensorFlow then sizes its thread pools to them); its last stdout line
    is the JSON result."""
    pinned = sorted(os.sched_getaffinity(0))[:cores] if cores else None
    completed = subprocess.run(
        [sys.executable, os.path.abspath(script), f"--child={json.dumps(job)}"],
        capture_output=True, text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, pinned)) if pinned else None)
    if completed.returncode:
        raise RuntimeError(f"measurement {job} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def alternate(jobs: list[dict], rounds: int, measure: Callable[[dict], dict],
              describe: Callable[[dict], str]) -> tuple[list[list[dict]], list[int]]:
    """Every job once per round, in order; (results per job, the order they ran in)."""
    runs: list[list[dict]] = [[] for _ in jobs]
    order = []
    for round_index in range(rounds):
        for i, job in enumerate(jobs):
            runs[i].append(measure(job))
            order.append(i)
            print(f"round {round_index + 1}/{rounds}: {describe(job)}: "
                  f"{runs[i][-1]['seconds']:.3f} s", flush=True)
    return runs, order


def report(jobs: list[dict], rounds: int, measure: Callable[[dict], dict],
           describe: Callable[[dict], str],
           summarise: Callable[[list[dict], list[list[dict]]], list[dict]],
           table: Callable[[list[dict]], list[str]], output: str, **recorded) -> list[dict]:
    """A benchmark's invocation: the machine's headline, the rounds, the table, and (to `output`)
    JSON of the machine, the command, `recorded` settings, every round and the table."""
    info = machine.describe()
    print(machine.headline(info))
    runs, order = alternate(jobs, rounds, measure, describe)
    rows = summarise(jobs, runs)
    lines = table(rows)
    print("\n".join(lines))
    if output:
        with open(output, "w") as f:
            json.dump({"machine": info, "command": sys.argv, **recorded, "rounds": rounds,
                       "order": order, "results": rows, "table": lines}, f, indent=2)
    return rows


def median_and_range(values: list[float]) -> tuple[float, list[float]]:
    return statistics.median(values), [min(values), max(values)]
