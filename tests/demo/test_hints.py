"""Why a method lost to the probe: each cause is read from the run (steps, loss curve, lr, validation loss, the
size of the test set), and the advice follows from it. Runs that beat the probe get no hint."""

from __future__ import annotations

import pytest

from lorakit.demo.hints import loss_trend, noise, why_behind
from tests.demo.results_helpers import PROBE, lora

FALLING = tuple(0.7 - 0.01 * i for i in range(20))  # still going down at the end
FLAT = (0.69, 0.70) * 60  # never moved
LEARNED = tuple([0.69] * 30 + [0.45] * 170)  # came down, then settled


def hint(run, tuned_lr=1e-3, test_examples=1279, max_steps=None) -> str:
    lines = why_behind(run, PROBE, tuned_lr, test_examples, max_steps)
    assert len(lines) == 2 and lines[1].startswith("try: ")
    return "\n".join(lines)


def test_loss_trend_reads_fifths_of_the_curve():
    trend = loss_trend([1.0] * 4 + [0.9] * 8 + [0.8] * 4 + [0.5] * 4)  # 20 points: fifths of 4
    assert (trend.first, trend.before_last, trend.last, trend.window) == (1.0, 0.8, 0.5, 4)
    assert trend.still_falling and not trend.flat
    assert loss_trend([0.7] * 9) is None  # too few points to read a trend


def test_noise_is_two_standard_errors():
    assert noise(0.75, 1200) == pytest.approx(2 * (0.75 * 0.25 / 1200) ** 0.5)
    assert noise(0.75, 1200) == pytest.approx(0.025)


def test_a_run_that_beats_or_ties_the_probe_gets_no_hint():
    assert why_behind(lora(), PROBE, 1e-3, 1279) == []
    assert why_behind(lora(test_accuracy=PROBE.test_accuracy), PROBE, 1e-3, 1279) == []


def test_few_steps_and_a_falling_loss_ask_for_more_training():
    text = hint(lora(test_accuracy=0.70, steps=20, epochs=1, train_losses=FALLING))
    assert text.startswith("why LoRA scored below the probe (0.700 vs 0.765 test accuracy): ")
    assert "it took only 20 optimizer steps" in text
    assert "still falling when training stopped (0.565 -> 0.525 over the last 8 steps)" in text
    assert text.endswith("try: training.epochs=2.")
    assert hint(lora(test_accuracy=0.70, steps=20, train_losses=FALLING), max_steps=20).endswith(
        "try: training.max_steps=40.")
    short = lora(test_accuracy=0.70, steps=12, train_losses=FALLING)
    assert why_behind(short, PROBE, 1e-3, 1279, max_steps=12, tuned_steps=150)[1] == "try: training.max_steps=150."


def test_an_lr_far_from_the_tuned_one_is_named_with_the_tuned_value():
    text = hint(lora(test_accuracy=0.70, lr=1e-5, train_losses=FLAT))
    assert "training.lr=1e-05 is far below the 0.001 the demo tuned for it" in text
    assert "its train loss hardly moved (0.695 -> 0.695)" in text and text.endswith("try: training.lr=0.001.")
    assert "far above the 0.001" in hint(lora(test_accuracy=0.70, lr=5e-2, train_losses=FLAT))


def test_a_flat_loss_at_a_sane_lr_is_still_reported():
    assert "hardly moved" in hint(lora(test_accuracy=0.70, train_losses=FLAT))


def test_memorizing_the_training_set_asks_for_fewer_epochs():
    text = hint(lora(test_accuracy=0.70, epochs=6, validation_loss=0.9, train_losses=tuple([0.6] * 40 + [0.1] * 160)))
    assert "far better than the validation ones (train loss 0.100, validation 0.900)" in text
    assert "fewer epochs (training.epochs=3) or a lower training.lr" in text


def test_a_gap_within_the_noise_of_the_test_set_says_so():
    text = hint(lora(test_accuracy=0.760, train_losses=LEARNED))
    assert "the gap (0.005) is within the noise of 1,279 test reviews (+-0.024)" in text
    assert "another training.seed" in text
    assert "nothing stands out" in hint(lora(test_accuracy=0.760, train_losses=LEARNED), test_examples=0)


def test_a_clear_loss_with_no_visible_cause_points_back_to_the_demo_settings():
    text = hint(lora(test_accuracy=0.60, train_losses=LEARNED))
    assert "nothing stands out in its run (200 steps, lr 0.001)" in text
    assert text.endswith("try: the demo's own settings (`lorakit demo` with no overrides).")
