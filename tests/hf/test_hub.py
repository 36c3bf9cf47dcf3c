"""Models named by a Hub id load from the standard HF cache (filled here in the Hub client's layout), offline,
honouring HF_HOME, HF_HUB_OFFLINE, revision, dtype=auto, trust_remote_code and attn_implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from lorakit.errors import ConfigError
from lorakit.hf.config import ModelConfig
from lorakit.hf.hub import cache_dir, looks_like_repo_id, split_revision
from lorakit.hf.models import load_model
from lorakit.hf.paths import resolve_model_path
from lorakit.hf.tiny import make_tiny_model
from tests.hf.hub_cache import add_snapshot, commit_id

REPO = "lorakit-test/tiny-llama"


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME, offline; returns its hub cache folder."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf-home" / "hub"


def _tiny(tmp_path: Path, name: str, seed: int, dtype: torch.dtype | None = None) -> Path:
    folder = make_tiny_model(tmp_path / name, "llama", seed=seed)
    if dtype is not None:  # re-save the weights in another dtype (config.json records it)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        model.save_pretrained(folder)
    return folder


def test_the_filled_cache_is_what_huggingface_hub_reads(hub_home, tmp_path):
    from huggingface_hub import scan_cache_dir

    add_snapshot(hub_home, REPO, _tiny(tmp_path, "m", 0), commit_id("one"))
    repos = {repo.repo_id: repo for repo in scan_cache_dir(hub_home).repos}
    assert set(repos) == {REPO}
    assert [sorted(r.refs) for r in repos[REPO].revisions] == [["main"]]


def test_hub_id_resolves_to_its_cached_snapshot_under_hf_home(hub_home, tmp_path):
    snapshot = add_snapshot(hub_home, REPO, _tiny(tmp_path, "m", 0), commit_id("one"))
    assert cache_dir() == hub_home
    assert resolve_model_path(REPO) == snapshot


def test_revision_picks_the_commit_a_tag_names(hub_home, tmp_path):
    add_snapshot(hub_home, REPO, _tiny(tmp_path, "a", 0), commit_id("one"))
    add_snapshot(hub_home, REPO, _tiny(tmp_path, "b", 1), commit_id("two"), refs=("v2",))
    expected = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    for revision in ("v2", commit_id("two")):
        path = resolve_model_path(REPO, revision)
        model = load_model(ModelConfig(path=REPO, revision=revision), path)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, expected[key])
    main = load_model(ModelConfig(path=REPO), resolve_model_path(REPO))
    assert not torch.equal(main.lm_head.weight, expected["lm_head.weight"])  # guard: the two commits differ


def test_a_bf16_checkpoint_loads_in_bf16_by_default_and_adapters_stay_float32(hub_home, tmp_path):
    import lorakit

    add_snapshot(hub_home, REPO, _tiny(tmp_path, "m", 0, torch.bfloat16), commit_id("one"))
    model = load_model(ModelConfig(path=REPO), resolve_model_path(REPO))
    assert ModelConfig().dtype == "auto"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}


def test_offline_and_not_cached_is_one_line_naming_the_cache_and_the_way_out(hub_home):
    with pytest.raises(ConfigError) as error:
        resolve_model_path("someone/not-cached")
    message = str(error.value)
    assert "HF_HUB_OFFLINE=1" in message and str(hub_home) in message and "hf download someone/not-cached" in message
    assert "\n" not in message


def test_unknown_revision_offline_is_refused(hub_home, tmp_path):
    add_snapshot(hub_home, REPO, _tiny(tmp_path, "m", 0), commit_id("one"))
    with pytest.raises(ConfigError, match="revision 'nope'"):
        resolve_model_path(REPO, "nope")


def test_online_with_the_hub_unreachable_falls_back_to_the_cache(hub_home, tmp_path, monkeypatch):
    snapshot = add_snapshot(hub_home, REPO, _tiny(tmp_path, "m", 0), commit_id("one"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    assert resolve_model_path(REPO) == snapshot


def test_revision_on_a_local_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="applies to a Hub id"):
        resolve_model_path(str(_tiny(tmp_path, "m", 0)), "main")


def test_attn_implementation_reaches_the_model(hub_home, tmp_path):
    add_snapshot(hub_home, REPO, _tiny(tmp_path, "m", 0), commit_id("one"))
    for implementation in ("eager", "sdpa"):
        model = load_model(ModelConfig(path=REPO, attn_implementation=implementation), resolve_model_path(REPO))
        assert model.config._attn_implementation == implementation


CUSTOM_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class ShoutConfig(LlamaConfig):
    model_type = "shout"


class ShoutForCausalLM(LlamaForCausalLM):
    config_class = ShoutConfig
'''


def test_remote_code_runs_only_when_trusted(hub_home, tmp_path):
    import json

    folder = _tiny(tmp_path, "m", 0)
    (folder / "shout.py").write_text(CUSTOM_CODE)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="shout", architectures=["ShoutForCausalLM"],
                  auto_map={"AutoConfig": "shout.ShoutConfig", "AutoModelForCausalLM": "shout.ShoutForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    add_snapshot(hub_home, "someone/shout", folder, commit_id("shout"))
    path = resolve_model_path("someone/shout")
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_model(ModelConfig(path="someone/shout"), path)
    model = load_model(ModelConfig(path="someone/shout", trust_remote_code=True), path)
    assert type(model).__name__ == "ShoutForCausalLM"


@pytest.mark.parametrize(("text", "expected"), [
    ("org/name", True), ("gpt2", True), ("org/name.v2", True), ("./org/name", False), ("/abs/path", False),
    ("~/models/x", False), ("a/b/c", False), ("model.gguf", False), ("org//name", False),
])
def test_what_counts_as_a_hub_id(text, expected):
    assert looks_like_repo_id(text) is expected


def test_adapter_revision_suffix():
    assert split_revision("org/adapter@v1.0") == ("org/adapter", "v1.0")
    assert split_revision("org/adapter") == ("org/adapter", None)
