"""`python -m benchmarks.scale --quick` (what CI runs; the full mode writes benchmarks/SCALE.md) produces the
report in one command: the command and machine at the top, every target with its value, the plots, and each
part's numbers from real runs (the QLoRA base quantized while loading, the merge shard by shard)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.scale import memory_7b

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_command_writes_the_whole_report(tmp_path):
    """The races (parts 2 and 3) are stubbed with their cached-section files here: their quick modes run in
    tests/benchmarks/test_scale_sft.py and test_scale_serving.py, and CI's time is counted."""
    out = tmp_path / "report"
    work = out / "work"
    work.mkdir(parents=True)
    for name, title in (("sft", "SFT end to end: stub"), ("serving", "Serving many adapters: stub")):
        target = {"name": f"{name} target", "measured": "1.0x", "met": True}
        (work / f"section-{name}-quick.json").write_text(json.dumps(
            {"title": title, "markdown": "stub", "targets": [target, target, target], "files": []}))
    (out / "serving_curve.json").write_text(json.dumps({"batch": [[1, 5.0], [4, 12.0]], "adapters": [[8, 20.0]]}))
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = (out / "SCALE.md").read_text()
    assert report.startswith("# lorakit at scale (quick mode")
    assert "Produced by `python -m benchmarks.scale --quick --out" in report and "Machine: " in report
    for title in ("1. A 7B-class model", "2. SFT end to end", "3. Serving many adapters", "4. How cost grows"):
        assert f"## {title}" in report, title
    targets = [line for line in report.split("## Targets")[1].split("\n## ")[0].splitlines() if line.count("|") == 4]
    assert len(targets) >= 2 + 3 + 3 + 2  # header + separator + part 1's three, part 2's three, part 3's two
    assert "FAILED" not in report and "| met |" not in report and "| NOT met |" not in report  # quick: unjudged
    for png in ("scale_model_size.png", "scale_rank.png", "scale_serving.png"):
        assert (out / png).stat().st_size > 5000, png
    qlora = json.loads((work / "train-tiny-qlora.json").read_text())
    lora = json.loads((work / "train-tiny-lora-bf16.json").read_text())
    assert qlora["losses"][0] == pytest.approx(lora["losses"][0], rel=0.05)  # the same model, packed or not
    assert all(v > 100 for v in (qlora["step_peak_mib"], lora["step_peak_mib"], qlora["process_peak_mib"]))
    merge = json.loads((work / "merge-tiny.json").read_text())
    assert "shard by shard" in merge["log_tail"] and merge["written_bytes"] > 0
    ranks = json.loads((work / "cost-tiny-r64-s64.json").read_text())
    assert ranks["trainable"] == 4 * lora["trainable"]  # r=64 trains four times r=16's parameters


def test_the_7b_section_judges_each_target_against_its_limit():
    results = {
        "plan": memory_7b.plan(quick=False), "params": 6_738_415_616, "shard_bytes": 5 * 1024**3,
        "qlora": {"load_s": 600, "load_peak_mib": 5000, "step_s": [200, 190], "step_peak_mib": 7 * 1024 + 1,
                  "save_peak_mib": 4000, "trainable": 40e6, "adapter_mib": 152},
        "lora-bf16": {"load_s": 60, "load_peak_mib": 13000, "step_s": [60, 55], "step_peak_mib": 16 * 1024,
                      "save_peak_mib": 13000, "trainable": 40e6, "adapter_mib": 152},
        "merge": {"peak_mib": 900, "wall_s": 300, "written_bytes": 13 * 1024**3},
    }
    section = memory_7b.section(results)
    assert [t.met for t in section.targets] == [False, True, True]
    assert "7.00 GiB" in section.targets[0].measured and "0.18 shards" in section.targets[2].measured
    assert "100 GiB" in section.markdown  # full fine-tuning's 16 bytes per parameter
