"""Why a method scored below the linear probe, read from what its run shows, and what to try. Pure functions.

A trained adapter (or a fully fine-tuned model) starts from the probe's features and can move them, so when it
scores below the probe on the same data the usual causes are visible in the run itself: too few optimizer steps,
a train loss still falling when training stopped, a learning rate far from the one the demo tuned, a loss that
never moved (lr too low or too high), a model that fits its training reviews far better than the validation ones,
or a gap too small to tell from the noise of the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean

from lorakit.demo.results import MethodResult

FEW_STEPS = 100  # below this an adapter has barely moved from its start (the demo's own runs take a few hundred)
WINDOW = 0.2  # the train-loss curve is read in fifths: the first, the one before last, the last
STILL_FALLING = 0.03  # the last fifth more than 3% below the one before it: training stopped while it still helped
FLAT = 0.03  # the last fifth within 3% of the first: the run hardly learned
LR_FACTOR = 3.0  # an lr more than 3x away from the tuned one, either way, is named
OVERFIT = 0.5  # final train loss under half the validation loss: memorizing rather than generalizing
MIN_POINTS = 10  # fewer logged losses than this: no trend is read


@dataclass(frozen=True)
class Trend:
    first: float  # mean train loss over the first fifth of the logged steps
    before_last: float  # over the fifth before the last
    last: float  # over the last fifth
    window: int  # steps per fifth

    @property
    def still_falling(self) -> bool:
        return self.last < self.before_last * (1 - STILL_FALLING)

    @property
    def flat(self) -> bool:
        return self.last > self.first * (1 - FLAT)


def loss_trend(losses: tuple[float, ...] | list[float]) -> Trend | None:
    """Window means of a train-loss curve (one loss per step, noisy: a mean over a fifth smooths it)."""
    if len(losses) < MIN_POINTS:
        return None
    k = max(1, int(len(losses) * WINDOW))
    return Trend(fmean(losses[:k]), fmean(losses[-2 * k:-k]), fmean(losses[-k:]), k)


def noise(accuracy: float, examples: int) -> float:
    """Two standard errors of an accuracy measured on `examples` items (a rough 95% band)."""
    return 2 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(examples, 1))


def why_behind(run: MethodResult, probe: MethodResult, tuned_lr: float, test_examples: int,
               max_steps: int | None = None, tuned_steps: int | None = None) -> list[str]:
    """Up to two lines saying why `run` scored below `probe` on the test set and what to try; [] when it did not.

    tuned_lr: the lr the demo config gives this method; test_examples: the size of the test set (0: unknown);
    max_steps: training.max_steps as the run had it; tuned_steps: the demo's own max_steps for this method."""
    if run.test_accuracy is None or probe.test_accuracy is None or run.test_accuracy >= probe.test_accuracy:
        return []
    reasons, tries = [], []
    trend = loss_trend(run.train_losses)
    lr_off = run.lr < tuned_lr / LR_FACTOR or run.lr > tuned_lr * LR_FACTOR
    if lr_off:
        side = "below" if run.lr < tuned_lr else "above"
        reasons.append(f"training.lr={run.lr:g} is far {side} the {tuned_lr:g} the demo tuned for it")
        tries.append(f"training.lr={tuned_lr:g}")
    if run.steps < FEW_STEPS:
        reasons.append(f"it took only {run.steps} optimizer steps")
    if trend is not None and trend.still_falling:
        reasons.append(f"its train loss was still falling when training stopped ({trend.before_last:.3f} -> "
                       f"{trend.last:.3f} over the last {2 * trend.window} steps)")
    elif trend is not None and trend.flat:
        reasons.append(f"its train loss hardly moved ({trend.first:.3f} -> {trend.last:.3f})")
    if (run.steps < FEW_STEPS or (trend is not None and trend.still_falling)) and not lr_off:
        more = max(2 * run.steps, tuned_steps or 0)  # at least the demo's own length
        tries.append(f"training.max_steps={more}" if max_steps else f"training.epochs={2 * run.epochs}")
    if trend is not None and run.validation_loss is not None and trend.last < OVERFIT * run.validation_loss:
        reasons.append(f"it fits its training reviews far better than the validation ones (train loss "
                       f"{trend.last:.3f}, validation {run.validation_loss:.3f})")
        tries.append(f"fewer epochs (training.epochs={max(1, run.epochs // 2)}) or a lower training.lr")
    gap = probe.test_accuracy - run.test_accuracy
    band = noise(probe.test_accuracy, test_examples)
    if not reasons and test_examples > 0 and gap < band:
        reasons.append(f"the gap ({gap:.3f}) is within the noise of {test_examples:,} test reviews (+-{band:.3f})")
        tries.append("another training.seed to see it move")
    if not reasons:
        reasons.append(f"nothing stands out in its run ({run.steps} steps, lr {run.lr:g})")
        tries.append("the demo's own settings (`lorakit demo` with no overrides)")
    return [f"why {run.title} scored below the probe ({run.test_accuracy:.3f} vs {probe.test_accuracy:.3f} test "
            f"accuracy): {'; '.join(reasons)}.", f"try: {' or '.join(dict.fromkeys(tries))}."]
