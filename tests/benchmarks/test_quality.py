"""benchmarks/quality.py end to end in quick mode (a few steps on tiny slices, 1 seed), and its parts against
independent references: the report's statistics against statistics.stdev, the target verdicts against the
numbers they are judged on, the data files against the corpus."""

from __future__ import annotations

import json
import re
import statistics

import pytest
from benchmarks.quality_data import ANSWER, chat_files, general_paragraphs
from benchmarks.quality_plan import METHODS, QUICK, Sizes
from benchmarks.quality_report import Results, pm, targets

from benchmarks import quality

ROW_NAMES = [m.name for m in METHODS]


@pytest.mark.slow
def test_quick_mode_writes_every_row(tmp_path) -> None:
    out = tmp_path / "QUALITY.md"
    assert quality.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    text = out.read_text()
    assert text.startswith("# lorakit quality") and "command: `python benchmarks/quality.py --quick" in text
    assert "machine: " in text and "mode: quick" in text
    for name in ROW_NAMES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        accuracy, percent = float(cells[2].split()[0]), float(cells[4])
        assert 0.0 <= accuracy <= 1.0 and 0.0 < percent <= 100.0, row
    section = text.split("## SmolLM2")[1].split("## Targets")[0]
    smol = [line for line in section.splitlines() if line.startswith("| ") and "|---" not in line][1:]
    assert [line.split("|")[1].strip() for line in smol] == ["LoRA r=8 all-linear", "full fine-tuning"]
    for line in smol:  # cells: held-out loss before -> after, then perplexity before -> after
        before, after = (float(x) for x in re.findall(r"([\d.]+) -> ([\d.]+)", line)[1])
        assert 1.0 < before < 1e6 and 1.0 < after < 1e6  # perplexity of real text under a real LM: above 1
    for target in ("LoRA accuracy >= 99%", "DoRA >= LoRA", "QLoRA within 1 point", "well above the probe",
                   "Forgetting"):
        assert target in text, target


def run(acc: float, percent: float = 0.3, train_mb: float = 100.0, peak: float = 900.0) -> dict:
    return {"summary": {"test_eval": {"accuracy": acc}, "trainable_percent": percent, "peak_rss_mb": peak},
            "train_mb": train_mb}


def test_targets_are_judged_on_the_means() -> None:
    res = Results("cmd", False, Sizes())
    res.minilm = {"full": [run(0.80, 100.0, 400.0), run(0.82, 100.0, 400.0)],
                  "lora_qv": [run(0.80, 0.3, 100.0), run(0.81, 0.3, 100.0)],  # 0.805 / 0.81 = 99.4%
                  "dora": [run(0.80)], "qlora": [run(0.79)], "probe": [run(0.70)]}
    res.smol = {"lora": {"general_before": {"perplexity": 10.0}, "general_after": {"perplexity": 10.5}},
                "full": {"general_before": {"perplexity": 10.0}, "general_after": {"perplexity": 12.0}}}
    lines = targets(res)
    verdicts = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in lines[2:] if line.startswith("| ")}
    assert any("undertrained" in line for line in lines)  # 60 steps < the demo's 200
    assert not any("met only in the letter" in line for line in lines)  # perplexity rose for both
    assert verdicts["LoRA accuracy >= 99% of full fine-tuning's, < 1% trainable"] == "yes"
    assert verdicts["DoRA >= LoRA"] == "no"  # 0.800 < 0.805
    assert verdicts["QLoRA within 1 point of LoRA"] == "no"  # 1.5 points below
    assert verdicts["every adapter method well above the probe (>= 2 points)"] == "yes"
    assert verdicts["LoRA peak memory <= 0.6x full fine-tuning's (training memory)"] == "yes"  # 0.25x
    assert verdicts["LoRA peak memory <= 0.6x full fine-tuning's (process peak RSS)"] == "no"  # 1.0x
    assert verdicts["Forgetting: LoRA's rise in general-text perplexity smaller than full fine-tuning's"] == "yes"


def test_mean_and_std_match_statistics() -> None:
    values = [0.71, 0.74, 0.78]
    assert pm(values) == f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
    assert pm([0.5]) == "0.500"  # one seed: no spread to show


def test_chat_rows_answer_in_the_fixed_form(tmp_path) -> None:
    files = chat_files(tmp_path, 5, 3)
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] in (ANSWER.format(label="fresh"), ANSWER.format(label="rotten"))


def test_general_text_is_prose_not_reviews() -> None:
    paragraphs = general_paragraphs()
    assert len(paragraphs) >= QUICK.general_rows and len(paragraphs) >= Sizes().general_rows
    assert not any(word in p.lower() for p in paragraphs for word in ("movie", "film", "review"))
    assert all(">>>" not in p and len(p) >= 200 for p in paragraphs)


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    with pytest.raises(SystemExit):
        quality.main(["--methods", "lora_qv,nonsense"])
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--seeds", "0"])
    assert "--seeds must be at least 1" in capsys.readouterr().err
