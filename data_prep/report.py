"""Accounting for a build: every manifest row ends written or skipped with a reason.

`Ledger` counts as the build goes; `Ledger.report` gives the content of `report.json`, whose
invariant `rows_in == images_written + sum(skipped.values())` is checked before it is written.
"""

from __future__ import annotations

import collections
import json

import tensorflow as tf

from simclr_med.errors import UserError

MAX_EXAMPLES = 20


class BuildError(UserError, RuntimeError):
    """A build stopped: a row could not be written under `--on_error=fail`."""


class Ledger:
    """Counts rows in, images written and rows skipped per reason (with a few examples each)."""

    def __init__(self, on_error: str) -> None:
        self.rows_in = 0
        self.images_written = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self._fail = on_error == "fail"

    def skip(self, reason: str, ref: str, detail: str) -> None:
        if self._fail:
            raise BuildError(f"{ref}: {reason}: {detail} (--on_error=fail stops at the first row "
                             f"that cannot be written; --on_error=skip counts and reports them)")
        self.skipped[reason] += 1
        if len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(f"{ref}: {detail}")

    def report(self, splits: dict[str, dict[str, int]], seconds: float, **extra) -> dict:
        """The report, after checking that every row is accounted for."""
        accounted = self.images_written + sum(self.skipped.values())
        if accounted != self.rows_in:
            raise RuntimeError(f"accounting error: {self.rows_in} rows in, {self.images_written} "
                             f"written + {sum(self.skipped.values())} skipped = {accounted}")
        return {"rows_in": self.rows_in, "images_written": self.images_written,
                "skipped": dict(sorted(self.skipped.items())),
                "skipped_examples": {reason: self.examples[reason] for reason in sorted(self.skipped)},
                "splits": splits, "seconds": round(seconds, 3),
                "images_per_second": round(self.images_written / max(seconds, 1e-9), 2), **extra}


def save_json(data: dict, path: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def format_summary(report: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"{report['rows_in']} manifest rows: {report['images_written']} images written, "
             f"{sum(report['skipped'].values())} skipped"]
    lines += [f"  skipped {reason}: {count} (e.g. {report['skipped_examples'][reason][0]})"
              for reason, count in report["skipped"].items()]
    lines += [f"  {split}: {counts['patients']} patients, {counts['cases']} cases, "
              f"{counts['images']} images" for split, counts in report["splits"].items()]
    lines.append(f"{report['seconds']:.1f} s, {report['images_per_second']:.1f} images/s")
    if "output_dir" in report:
        lines.append(f"output: {report['output_dir']}")
    return "\n".join(lines)
