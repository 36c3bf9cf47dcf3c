"""A run on a Hub-id base records the id (as PEFT does), and adapters named by a Hub id load, merge and serve from
the HF cache (filled here in the Hub client's layout), offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli.main import main
from lorakit.hf.hub import local_adapter
from lorakit.serve.cache import AdapterCache
from lorakit.train.run import train
from tests.hf.hub_cache import add_snapshot, commit_id
from tests.train.runs import config_of, make_run

BASE_ID, ADAPTER_ID = "lorakit-test/tiny-llama", "lorakit-test/tiny-lora"
IDS = torch.tensor([[5, 9, 17, 33, 2, 40]])


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    """A cache holding a tiny Llama (BASE_ID) and an adapter trained on it by id (ADAPTER_ID), plus the run."""
    tmp = tmp_path_factory.mktemp("hub")
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HOME", str(tmp / "hf-home"))
    patch.delenv("HF_HUB_CACHE", raising=False)
    patch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp / "hf-home" / "hub"
    config = make_run(tmp, "causal", training={"max_steps": 4})
    add_snapshot(cache, BASE_ID, tmp / "tiny-llama", commit_id("base"))
    shutil.rmtree(tmp / "tiny-llama")  # from now on the base exists only in the cache
    result = train(config_of(config, f"model.path={BASE_ID}"))
    add_snapshot(cache, ADAPTER_ID, result.output_dir, commit_id("adapter"), refs=("main", "v1"))
    yield {"run": result.output_dir, "cache": cache, "tmp": tmp}
    patch.undo()


def _base(hub) -> torch.nn.Module:
    snapshot = next((hub["cache"] / "models--lorakit-test--tiny-llama" / "snapshots").iterdir())
    return AutoModelForCausalLM.from_pretrained(snapshot).eval()


def test_a_run_on_a_hub_id_records_the_id_not_a_cache_path(hub):
    adapter_config = json.loads((hub["run"] / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BASE_ID
    assert yaml.safe_load((hub["run"] / "train_config.yaml").read_text())["model"]["path"] == BASE_ID


def test_load_adapter_by_hub_id_equals_loading_the_folder(hub):
    by_id, by_folder, plain = _base(hub), _base(hub), _base(hub)
    lorakit.load_adapter(by_id, f"{ADAPTER_ID}@v1")
    lorakit.load_adapter(by_folder, hub["run"])
    with torch.no_grad():
        torch.testing.assert_close(by_id(IDS).logits, by_folder(IDS).logits)
        assert not torch.allclose(by_id(IDS).logits, plain(IDS).logits)  # guard: the adapter changes the output


def test_merge_by_hub_id_finds_the_base_by_its_id_too(hub, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", ADAPTER_ID, str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = _base(hub)
    lorakit.load_adapter(reference, hub["run"])
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, reference(IDS).logits)


def test_serve_takes_a_hub_adapter_by_name_beside_the_folder(hub, tmp_path):
    (tmp_path / "adapters").mkdir()
    cache = AdapterCache(_base(hub), tmp_path / "adapters", named={"sql": local_adapter(f"{ADAPTER_ID}@v1")})
    assert cache.available() == ["sql"]
    assert cache.read("sql").layers  # read, checked against the base's fingerprint, folded


def test_a_missing_hub_adapter_is_one_line(hub, capsys):
    assert main(["merge", "nobody/no-adapter", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nobody/no-adapter" in err and "HF_HUB_OFFLINE=1" in err and "\n" not in err


def test_serve_refuses_a_malformed_adapter_option(capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path), "--adapter", "no-equals-sign"]) == 2
    assert "NAME=SOURCE" in capsys.readouterr().err


PEFT_BY_ID = """
import sys, torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()  # the base found by its recorded Hub id
with torch.no_grad():
    print(model(torch.tensor([[5, 9, 17, 33, 2, 40]])).logits.flatten().tolist())
"""


def test_peft_finds_the_base_by_the_recorded_id_and_gives_the_same_logits(hub):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(hub["tmp"] / "hf-home"), "HF_HUB_OFFLINE": "1"}  # a fresh process reads them
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", PEFT_BY_ID, str(hub["run"])], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reference = _base(hub)
    lorakit.load_adapter(reference, hub["run"])
    with torch.no_grad():
        expected = reference(IDS).logits.flatten()
    torch.testing.assert_close(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])), expected)
