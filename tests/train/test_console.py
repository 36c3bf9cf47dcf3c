"""What a run prints: the start-up summary (its numbers checked against the data and the saved adapter), one line
per evaluation (against metrics.jsonl), and plain progress lines, not a carriage-return bar, when the output is
not a terminal."""

from __future__ import annotations

import json
import sys

import pytest
from safetensors.torch import load_file

from lorakit.cli.main import main
from lorakit.hf.tokenizer import load_tokenizer
from lorakit.train.config import load_config
from lorakit.train.console import (
    PROGRESS_SECONDS,
    ProgressLines,
    StartInfo,
    eval_line,
    human_duration,
    line_interval,
    non_default_settings,
    progress_line,
    startup_summary,
)
from lorakit.train.data import build_datasets
from lorakit.train.metrics import read_metrics
from tests.train.runs import config_of, make_run


def test_non_default_settings_are_exactly_the_ones_changed():
    defaults = load_config(None, [], base="").to_dict()
    changed = load_config(None, ["lora.r=16", "training.lr=3e-4", "output.report_to=none"], base="").to_dict()
    assert non_default_settings(changed, defaults) == ["lora.r: 16", "training.lr: 0.0003", "output.report_to: []"]
    assert non_default_settings(defaults, defaults) == []


def test_eval_line_puts_loss_first_and_marks_the_best():
    metrics = {"accuracy": 0.801, "loss": 0.41234, "f1": 0.795}
    assert eval_line(40, 200, metrics, best=True) == "eval step 40/200: loss 0.4123  accuracy 0.8010  f1 0.7950 (best)"
    assert eval_line(60, 200, {"loss": 0.5}, best=False) == "eval step 60/200: loss 0.5000"


def test_progress_line():
    assert progress_line(20, 200, 0.693147, 1.9e-4, 180 / 62) == \
        "step 20/200  loss 0.6931  lr 1.9e-04  2.9 step/s  eta 1m02s"
    assert progress_line(1, 3, 1.0, 1e-3, 0.05).endswith("20.0 s/step  eta 40s")  # slow steps read as s/step


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (4, "4s"), (62, "1m02s"), (3600 * 2 + 300, "2h05m")])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize(("log_every", "total", "every"), [(1, 200, 10), (1, 7, 1), (25, 200, 25), (1, 1000, 50)])
def test_line_interval(log_every, total, every):
    assert line_interval(log_every, total) == every


def test_progress_lines_come_every_n_steps_at_the_end_and_when_steps_are_slow():
    now = [0.0]
    lines = ProgressLines(total=12, every=5, clock=lambda: now[0])
    shown = []
    for step in range(1, 13):
        now[0] += 1.0 if step < 8 else PROGRESS_SECONDS  # steps 8..12 are slow
        if lines.update(step, 0.5, 1e-3):
            shown.append(step)
    assert shown == [5, 8, 9, 10, 11, 12]


def test_startup_summary_rows():
    info = StartInfo(run_name="r", stats={"train_examples": 1200, "validation_examples": 100, "truncated": 7,
                                          "dropped": 2, "bad_rows": 3}, test_examples=50, total_steps=300,
                     steps_per_epoch=150, global_batch=8, trainable=1000, total=100000, tokens_per_step=1536.4,
                     changed=["lora.r: 16"], trackers=["wandb offline: x"])
    text = startup_summary(info)
    assert text.splitlines()[0] == "run r"
    for row in ("1,200 train, 100 validation, 50 test",
                "7 cut to data.max_seq_len, 2 dropped (no trained token left), 3 bad rows skipped",
                "300 (150 per epoch)", "1,000 of 100,000 (1.000%)", "1,536 (mean", "metrics.jsonl",
                "wandb offline: x", "    lora.r: 16"):
        assert row in text, row


def run_output(tmp_path, capsys, *overrides: str) -> tuple[str, dict]:
    """Everything `lorakit train` prints (stdout and stderr) for a tiny run, and its summary.json."""
    config = make_run(tmp_path, "causal")
    capsys.readouterr()
    assert main(["train", str(config), "training.max_steps=4", "training.eval_every=2", "training.progress=true",
                 *overrides]) == 0
    captured = capsys.readouterr()
    return captured.out + captured.err, json.loads((tmp_path / "out" / "summary.json").read_text())


def test_a_run_prints_its_summary_first_then_plain_lines_when_not_a_terminal(tmp_path, capsys):
    text, summary = run_output(tmp_path, capsys, "training.log_every=2", "lora.r=2")
    out = tmp_path / "out"
    assert "\r" not in text  # no carriage-return bar in a log
    lines = [line.removeprefix("lorakit train: ") for line in text.splitlines()]
    start = lines.index("run out")
    progress = [line for line in lines if line.startswith("step ")]
    assert [p.split()[1] for p in progress] == ["2/4", "4/4"] and lines.index(progress[0]) > start
    # the summary's numbers against independent counts: the saved adapter's tensors, the data
    trainable = sum(t.numel() for t in load_file(str(out / "adapter_model.safetensors")).values())
    assert f"trainable params  {trainable:,} of " in text
    cfg = config_of(tmp_path / "causal.yaml")
    train_set, val_set, _ = build_datasets(cfg.data, load_tokenizer(tmp_path / "tiny-llama"))
    mean = sum(len(e["input_ids"]) for e in train_set) / len(train_set)
    assert f"tokens per step   {mean * 4:,.0f} (mean" in text
    assert f"{len(train_set)} train, {len(val_set)} validation, 0 test" in text
    assert "    lora.r: 2" in lines and "    training.log_every: 2" in lines
    # one line per evaluation, with the numbers metrics.jsonl holds
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    printed = [line for line in lines if line.startswith("eval step")]
    assert printed == [eval_line(r["step"], 4, {k: v for k, v in r.items() if k not in ("step", "kind")},
                                 best=summary["best_step"] == r["step"] or i == 0)
                       for i, r in enumerate(evals)]


def test_a_terminal_gets_the_bar_and_no_progress_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    text, _ = run_output(tmp_path, capsys)
    assert not [line for line in text.splitlines() if "step 2/4 " in line and "loss" in line]
    assert "\r" in text  # tqdm's bar


def test_progress_false_prints_no_progress(tmp_path, capsys):
    text, _ = run_output(tmp_path, capsys, "training.progress=false")
    assert "run out" in text and "eval step 2/4" in text
    assert not [line for line in text.splitlines() if "step/s" in line or "s/step" in line]


def test_progress_lines_count_from_the_last_line_so_none_come_a_step_apart():
    from itertools import pairwise

    from lorakit.train.console import ProgressLines

    clock = iter(range(0, 10_000, 20))  # 20 s a step: the 30 s rule fires every second step
    lines = ProgressLines(total=100, every=17, clock=lambda: next(clock))
    printed = [step for step in range(1, 101) if lines.update(step, 0.5, 1e-4)]
    assert all(b - a >= 2 for a, b in pairwise(printed))
    assert printed[-1] == 100
