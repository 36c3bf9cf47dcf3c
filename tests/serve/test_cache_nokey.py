"""Every loader refuses an adapter of which no tensor lands on the model (the server's cache, load_adapter, merge
and eval), rather than serving or scoring the base model under the adapter's name."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.errors import AdapterFileError
from lorakit.io.keys import PREFIX
from lorakit.serve.cache import AdapterCache


def _copy_as(served, source: str, target: Path, rename=lambda key: key, keep=lambda key: True) -> Path:
    """The served adapter `source` rewritten as a PEFT-style file (no lorakit records) with its keys changed."""
    target.mkdir(parents=True)
    tensors = load_file(str(served.adapter_dir / source / "adapter_model.safetensors"))
    save_file({rename(k): v for k, v in tensors.items() if keep(k)}, str(target / "adapter_model.safetensors"))
    config = json.loads((served.adapter_dir / source / "adapter_config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("lorakit_")}
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


def _wrapper_prefixed(key: str) -> str:  # what a wrapper model's keys look like on the bare model
    return PREFIX + "model." + key[len(PREFIX):]


def test_serve_refuses_an_adapter_without_tensors(served, tmp_path):
    _copy_as(served, "beta", tmp_path / "empty", keep=lambda key: False)
    cache = AdapterCache(copy.deepcopy(served.model), tmp_path)
    with pytest.raises(AdapterFileError, match="no tensor"):
        cache.read("empty")
    assert cache.resident == {}


def test_serve_refuses_an_adapter_whose_layers_the_model_lacks(served, tmp_path):
    _copy_as(served, "beta", tmp_path / "elsewhere", rename=_wrapper_prefixed)
    cache = AdapterCache(copy.deepcopy(served.model), tmp_path)
    with pytest.raises(AdapterFileError, match="which this model does not have"):
        cache.read("elsewhere")


@pytest.mark.parametrize("kind", ["empty", "elsewhere"])
def test_load_adapter_refuses_and_leaves_the_model_alone(served, tmp_path, kind):
    if kind == "empty":
        _copy_as(served, "beta", tmp_path / kind, keep=lambda key: False)
    else:
        _copy_as(served, "beta", tmp_path / kind, rename=_wrapper_prefixed)
    model = copy.deepcopy(served.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterFileError):
        lorakit.load_adapter(model, tmp_path / kind)
    assert lorakit.list_adapters(model) == [] and model.state_dict().keys() == before.keys()


def test_merge_refuses_with_one_line(served, tmp_path, capsys):
    from lorakit.cli.main import main

    adapter = _copy_as(served, "beta", tmp_path / "elsewhere", rename=_wrapper_prefixed)
    out = tmp_path / "merged"
    assert main(["merge", str(served.base_dir), str(adapter), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matches no parameter" in err
    assert not out.exists() or not any(out.iterdir())


def test_eval_refuses_with_one_line(tmp_path, capsys):
    from lorakit.cli.main import main
    from lorakit.train.run import train
    from tests.train.runs import config_of, make_run

    run = train(config_of(make_run(tmp_path, "causal"), "training.max_steps=1")).output_dir
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    tensors = load_file(str(run / "adapter_model.safetensors"))
    save_file({_wrapper_prefixed(k): v for k, v in tensors.items()}, str(moved / "adapter_model.safetensors"))
    config = json.loads((run / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                           if not k.startswith("lorakit_")}))
    assert main(["eval", str(run), "--adapter", str(moved), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matches no parameter" in err
