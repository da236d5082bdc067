"""Smoke runs of the benchmarks (a few steps each), so that they keep working: the figures in the
README come from them."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def _bench(script: str, *arguments: str) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, f"bench/{script}", *arguments], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_pretrain_step_alternates_the_settings_and_compares_them(tmp_path):
    """Two of our settings and the Keras yardstick of the second, two rounds: every round runs
    every measurement once (A B Y A B Y), each in its own process; the ratios are those of the
    medians."""
    output = tmp_path / "pretrain_step.json"
    small = "depth=18,width=0.25,size=32,batch=4"
    deep = "depth=50,width=0.25,size=32,batch=2,micle=1,augment_on=device,input_threads=1"
    completed = _bench("pretrain_step.py", f"--setting={small}", f"--setting={deep}",
                       "--rounds=2", "--steps=1", "--steps_per_loop=1", f"--output={output}")
    found = json.loads(output.read_text())
    assert found["order"] == [0, 1, 2, 0, 1, 2]
    ours, theirs, yardstick = found["results"]
    assert [ours["kind"], theirs["kind"], yardstick["kind"]] == ["simclr_med"] * 2 + ["yardstick"]
    assert (theirs["micle"], yardstick["depth"], yardstick["batch"]) == (1, 50, 2)
    assert (theirs["augment_on"], theirs["input_threads"]) == ("device", 1)
    assert ours["checkpoint_seconds"] > 0 and theirs["checkpoint_seconds"] > 0
    for row in found["results"]:
        assert len(row["rounds"]) == 2
        seconds = sorted(r["seconds"] for r in row["rounds"])
        assert row["step_seconds"] == pytest.approx(sum(seconds) / 2)  # the median of two
        assert row["pairs_per_second"] == pytest.approx(row["batch"] / row["step_seconds"])
        assert 0.1 < row["peak_rss_gb"] < 20
    assert ours["ratio_to_baseline"] == 1.0 and ours["per_view_vs_keras_per_image"] is None
    assert theirs["ratio_to_baseline"] == pytest.approx(
        theirs["pairs_per_second"] / ours["pairs_per_second"])
    assert theirs["per_view_vs_keras_per_image"] == pytest.approx(
        yardstick["views_per_second"] / theirs["views_per_second"])
    machine = found["machine"]
    assert machine["cores"] >= 1 and ("tensorflow-cpu" in machine or "tensorflow" in machine)
    assert found["table"][1].startswith(small) and found["table"][-1].startswith(
        "Keras ResNet50 supervised, 32 px, 4 images/step, float32")
    assert "\n".join(found["table"]) in completed.stdout



def test_input_pipeline_pins_each_measurement_to_its_cores(tmp_path):
    """SimCLR on one core and MICLe with the cxr preset on two, alternating: each child process
    sees exactly the CPUs it was given, and per-core figures divide by them."""
    output = tmp_path / "input_pipeline.json"
    one = "micle=0,augment=simclr,size=32,batch=4,cores=1"
    two = "micle=1,augment=cxr,size=32,batch=4,cores=2,augment_on=device"
    completed = _bench("input_pipeline.py", f"--setting={one}", f"--setting={two}", "--rounds=2",
                       "--batches=2", "--warmup=1", f"--output={output}")
    found = json.loads(output.read_text())
    assert found["order"] == [0, 1, 0, 1]
    simclr, micle = found["results"]
    assert (simclr["micle"], micle["micle"], micle["augment"]) == (0, 1, "cxr")
    assert simclr["cpus_seen"] == 1 and micle["cpus_seen"] == min(2, len(os.sched_getaffinity(0)))
    for row in found["results"]:
        assert [r["cpus"] for r in row["rounds"]] == [row["cpus_seen"]] * 2
        seconds = sorted(r["seconds"] for r in row["rounds"])
        assert row["batch_seconds"] == pytest.approx(sum(seconds) / 2)
        assert row["pairs_per_second"] == pytest.approx(4 / row["batch_seconds"])
        assert row["pairs_per_second_per_core"] == pytest.approx(
            row["pairs_per_second"] / row["cores"])
    assert "\n".join(found["table"]) in completed.stdout


def test_inference_times_evaluation_and_serving(tmp_path):
    output = tmp_path / "inference.json"
    completed = _bench("inference.py", "--setting=depth=18,width=0.25,size=32,batch=4,cores=1",
                       "--rounds=2", "--images=8", f"--output={output}")
    found = json.loads(output.read_text())
    (row,) = found["results"]
    assert found["order"] == [0, 0] and len(row["rounds"]) == 2
    for path in ("eval", "serving"):
        per_image = sorted(r[f"{path}_seconds_per_image"] for r in row["rounds"])
        assert row[f"{path}_images_per_second"] == pytest.approx(2 / sum(per_image))
        low, high = row[f"{path}_images_per_second_range"]
        assert low == pytest.approx(1 / per_image[1]) and high == pytest.approx(1 / per_image[0])
    assert found["table"][1].startswith("depth=18,width=0.25,size=32,batch=4,cores=1")
    assert "\n".join(found["table"]) in completed.stdout


def test_loss_curve_pairs_the_seeds_of_each_precision(tmp_path):
    """float32 and bfloat16, seeds 0 and 1, alternating; each run trains in the precision it is
    given; the tail means, the paired difference and the verdict are those of the curves."""
    output, picture = tmp_path / "loss_curve.json", tmp_path / "loss_curve.png"
    completed = _bench("loss_curve.py", "--setting=depth=18,width=0.25,size=32,batch=4",
                       "--seeds=2", "--steps=6", "--steps_per_loop=2", "--tail=0.5",
                       f"--output={output}", f"--plot={picture}")
    found = json.loads(output.read_text())
    assert found["order"] == [0, 1, 2, 3]
    reference, bfloat16 = found["results"]
    assert [reference["computed_in"], bfloat16["computed_in"]] == ["float32", "mixed_bfloat16"]
    tails = {}
    for row in found["results"]:
        curves = np.array(row["curves"])
        assert row["steps"] == [2, 4, 6] and curves.shape == (2, 3)
        assert np.isfinite(curves).all()
        tails[row["precision"]] = curves[:, -2:].mean(axis=1)  # round(0.5 * 3) = 2 points
        assert row["tail_means"] == pytest.approx(tails[row["precision"]].tolist())
        assert row["seed_sd"] == pytest.approx(np.std(tails[row["precision"]], ddof=1))
    paired = tails["mixed_bfloat16"] - tails["float32"]
    assert bfloat16["difference"] == pytest.approx(paired.mean())
    assert bfloat16["difference_se"] == pytest.approx(np.std(paired, ddof=1) / np.sqrt(2))
    assert bfloat16["within_noise"] == (abs(paired.mean()) <= reference["seed_sd"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\n".join(found["table"]) in completed.stdout
