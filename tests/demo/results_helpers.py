"""MethodResult values for the demo's formatting and hint tests (numbers of the size a real demo run gives)."""

from __future__ import annotations

import dataclasses

from lorakit.demo.results import MethodResult

PROBE = MethodResult(
    method="probe", test_accuracy=0.7654, validation_accuracy=0.771, validation_loss=0.50, trainable_params=770,
    total_params=22_713_986, saved_bytes=3_380, train_s=41.25, wall_s=60.0, peak_rss_mb=612.4, steps=200, epochs=1,
    lr=3e-2, train_losses=tuple([0.69] * 40 + [0.52] * 160), output_dir="d/probe")
LORA = dataclasses.replace(
    PROBE, method="lora", test_accuracy=0.8012, validation_accuracy=0.80, trainable_params=74_498,
    total_params=22_788_484, saved_bytes=303_104, train_s=95.0, peak_rss_mb=820.0, lr=1e-3, output_dir="d/lora")
FULL = dataclasses.replace(
    PROBE, method="full", test_accuracy=0.8123, validation_accuracy=0.815, trainable_params=22_713_986,
    saved_bytes=90_914_816, train_s=150.5, peak_rss_mb=1_612.0, lr=5e-5, output_dir="d/full")


def lora(**changes) -> MethodResult:
    return dataclasses.replace(LORA, **changes)
