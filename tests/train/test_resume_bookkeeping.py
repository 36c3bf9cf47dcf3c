"""What a resume keeps and drops besides the weights: the metrics file reads as one run, a finished run is left
alone, and the temporary files of killed saves are cleaned at the next start."""

from __future__ import annotations

import pytest

from lorakit.cli.main import main
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train
from lorakit.train.trainer import Trainer
from tests.train.folder_helpers import snapshot
from tests.train.runs import config_of, make_run
from tests.train.test_resume import StopAt, assert_same_adapter


def records(out) -> list[tuple[int, str]]:
    return [(r["step"], r["kind"]) for r in read_metrics(out / "metrics.jsonl")]


def test_a_kill_before_the_first_checkpoint_then_resume_gives_one_set_of_records(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 6, "save_every": 5, "eval_every": 3})
    reference = train(config_of(config, f"output.dir={tmp_path / 'reference'}")).output_dir
    crashed = config_of(config)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, hooks=[StopAt(3)]).train()  # dies in step 4: steps 1-3 and one eval logged, no checkpoint
    assert records(tmp_path / "out") == records(reference)[:4]
    train(crashed, resume=True)  # no checkpoint: from step 0, and the records of the first attempt go
    assert records(tmp_path / "out") == records(reference)
    assert_same_adapter(reference, tmp_path / "out")


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 4, "save_every": 2, "eval_every": 2})
    assert main(["train", str(config)]) == 0
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    assert main(["train", str(config), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert snapshot(tmp_path / "out") == before
    assert records(tmp_path / "out").count((4, "eval")) == 1


def test_a_finished_run_without_checkpoints_is_not_trained_again(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 3})
    train(config_of(config))
    before = snapshot(tmp_path / "out")
    result = train(config_of(config), resume=True)
    assert result.summary["steps"] == 3
    assert snapshot(tmp_path / "out") == before


def test_a_finished_run_can_be_extended(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 2, "save_every": 2})
    train(config_of(config))
    result = train(config_of(config, "training.max_steps=4"), resume=True)
    assert result.summary["steps"] == 4
    assert [s for s, k in records(tmp_path / "out") if k == "train"] == [1, 2, 3, 4]


def test_killed_after_the_last_checkpoint_the_final_eval_is_not_logged_twice(tmp_path, monkeypatch):
    config = make_run(tmp_path, "causal", training={"max_steps": 4, "save_every": 2, "eval_every": 2})

    def killed(self, directory, atomic=True):
        if not atomic:  # the last save of the run: the process dies before it
            raise KeyboardInterrupt
        return real(self, directory, atomic)

    real = Trainer._save_adapter
    monkeypatch.setattr(Trainer, "_save_adapter", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config_of(config))
    monkeypatch.undo()
    train(config_of(config), resume=True)
    assert records(tmp_path / "out").count((4, "eval")) == 1
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_leftovers_of_killed_saves_are_cleaned_at_the_next_start(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 2, "save_every": 2, "eval_every": 2})
    train(config_of(config))
    out = tmp_path / "out"
    leftovers = [out / ".tmp-best-k2j3", out / "checkpoints" / ".tmp-step-00000004-x", out / "best" / ".tmp-x"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"half")
    for name in (".adapter_model.safetensors.a8f.tmp", ".adapter_config.json.q1.tmp", "metrics.tmp"):
        (out / name).write_bytes(b"half")
    mine = out / "notes.tmp.txt"
    mine.write_text("not lorakit's")
    train(config_of(config, "training.max_steps=3"), resume=True)
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp") == []
    assert mine.read_text() == "not lorakit's"
