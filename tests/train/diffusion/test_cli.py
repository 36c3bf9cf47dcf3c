"""`lorakit train` with model.task=text-to-image: bad inputs are one line and leave nothing written."""

from __future__ import annotations

import pytest
import yaml

from lorakit.cli.main import main
from tests.train.diffusion.helpers import image_folder


def write_config(tmp_path, pipe, data, **diffusion):
    config = {"model": {"path": str(pipe), "task": "text-to-image"}, "data": {"path": str(data)},
              "diffusion": {"resolution": 32, **diffusion},
              "training": {"max_steps": 1, "batch_size": 2, "device": "cpu", "progress": False},
              "output": {"dir": str(tmp_path / "out"), "report_to": "none", "plot": False}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lorakit train: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("case", "message"), [
    ("empty", "holds no images"),
    ("broken", r"img01\.png: not a readable image"),
    ("uncaptioned", r"img00\.png: no caption"),
    ("not a pipeline", "not a diffusers pipeline folder"),
])
def test_bad_inputs_are_one_line_and_nothing_is_written(tiny_sd, tmp_path, capsys, case, message):
    data = image_folder(tmp_path / "imgs", count=2, caption=None if case == "uncaptioned" else "a red square")
    pipe = tiny_sd
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "broken":
        (data / "img01.png").write_bytes(b"\x89PNG truncated")
    elif case == "not a pipeline":
        pipe = tmp_path / "imgs"
    assert main(["train", str(write_config(tmp_path, pipe, data))]) == 2
    assert __import__("re").search(message, one_line(capsys))
    assert not (tmp_path / "out").exists()


def test_print_config_resolves_a_text_to_image_run(tiny_sd, tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", count=2)
    assert main(["train", str(write_config(tmp_path, tiny_sd, data)), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["path"] == str(tiny_sd.resolve()) and printed["diffusion"]["resolution"] == 32


def test_a_run_from_the_command_line_trains_and_samples(tiny_sd, tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", count=2)
    config = write_config(tmp_path, tiny_sd, data, validation_prompt="a red square", validation_inference_steps=1)
    assert main(["train", str(config)]) == 0
    assert "lorakit train: done" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out" / "samples").iterdir()] == ["step-00000001-0.png"]
