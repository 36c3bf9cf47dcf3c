"""benchmarks/scale/sft_race.py in quick mode (a tiny random Llama, 3 steps): every contender runs, lorakit's and TRL's
loss curves on the same batches agree, and the section reports every variant and the three targets, unjudged (a
quick run's numbers mean nothing)."""

from __future__ import annotations

import json

import pytest
from benchmarks.scale import sft_race


@pytest.mark.slow
def test_quick_race_reports_every_variant_and_target(tmp_path) -> None:
    section = sft_race.run(tmp_path, quick=True)
    for label in sft_race.LABELS.values():
        assert f"| {label} |" in section.markdown
    assert "(agree;" in section.markdown
    assert [t.met for t in section.targets] == [None, None, None]
    assert ["2.5x" in section.targets[0].name, "1.5x" in section.targets[1].name, "0.8x" in section.targets[2].name] \
        == [True, True, True]
    raw = json.loads((tmp_path / "sft_race.json").read_text())
    assert section.files == [tmp_path / "sft_race.json"]
    runs = raw["runs"]
    # the reference: TRL's SFTTrainer, fed the same tokens in the same order from the same initial adapter, logs
    # the losses lorakit's trainer logs
    ours, theirs = runs["lorakit-unpacked"][0]["losses"], runs["trl-default"][0]["losses"]
    assert len(ours) == len(theirs) == raw["plan"]["steps"]
    assert ours == pytest.approx(theirs, rel=2e-3)
    assert ours[0] != pytest.approx(ours[-1], rel=1e-6)  # guard: training moved the loss
    # the real tokens of a padded batch are counted the same on both sides; a packed step fits its blocks' room
    assert runs["lorakit-unpacked"][0]["tokens"] == runs["trl-default"][0]["tokens"]
    room = raw["plan"]["batch"] * raw["plan"]["seq"]
    assert all(0 < tokens <= room for run in runs.values() for tokens in run[0]["tokens"])
    assert all(run[0]["peak_rss_mib"] > 50 for run in runs.values())


def test_the_cli_prints_the_section(tmp_path, monkeypatch, capsys) -> None:
    section = sft_race.Section("title", "body")
    monkeypatch.setattr(sft_race, "run",
                        lambda out, quick, **changes: section if quick and out == tmp_path and not changes else None)
    assert sft_race.main(["--quick", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "## title\n\nbody\n"
