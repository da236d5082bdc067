import math

import pytest

from simclr_med.training import schedule


def test_scaling_rules():
    assert schedule.scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert schedule.scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    with pytest.raises(ValueError, match="linear or sqrt"):
        schedule.scaled_learning_rate(0.1, 256, "cubic")


def test_warmup_steps_round_epochs_to_steps():
    assert schedule.warmup_steps(10, 1000, 64) == round(10 * 1000 / 64)
    assert schedule.warmup_steps(0, 1000, 64) == 0


def test_warmup_then_cosine_values():
    lr = schedule.WarmupCosine(peak=2.0, warmup=10, total=110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(1.0)
    assert float(lr(10)) == pytest.approx(2.0)  # end of warm-up: the peak
    assert float(lr(60)) == pytest.approx(1.0)  # half-way through the cosine
    assert float(lr(35)) == pytest.approx(1.0 + math.cos(math.pi * 0.25))
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-7)  # the end
    assert float(lr(500)) == pytest.approx(0.0, abs=1e-7)


def test_no_warmup_starts_at_peak():
    lr = schedule.WarmupCosine(peak=1.0, warmup=0, total=10)
    assert float(lr(0)) == pytest.approx(1.0)
