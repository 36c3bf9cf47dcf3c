"""io/keys.py: model key <-> adapter-file key, checked by hand-written tables and against PEFT itself."""

from __future__ import annotations

import pytest

from lorakit.io.keys import (
    PREFIX,
    base_bias_file_key,
    layer_path_of,
    model_key_candidates,
    tensor_role,
    to_file_key,
    to_model_key,
)

Q = "model.layers.0.self_attn.q_proj"
# (model key, adapter name, file key): every tensor kind PEFT writes
TABLE = [
    (f"{Q}.lora_A.default.weight", "default", f"{PREFIX}{Q}.lora_A.weight"),
    (f"{Q}.lora_B.default.weight", "default", f"{PREFIX}{Q}.lora_B.weight"),
    (f"{Q}.lora_B.default.bias", "default", f"{PREFIX}{Q}.lora_B.bias"),  # lora_bias=True
    (f"{Q}.lora_A.other.weight", "other", f"{PREFIX}{Q}.lora_A.weight"),
    ("model.embed_tokens.lora_embedding_A.default", "default", f"{PREFIX}model.embed_tokens.lora_embedding_A"),
    ("model.embed_tokens.lora_embedding_B.x", "x", f"{PREFIX}model.embed_tokens.lora_embedding_B"),
    (f"{Q}.lora_magnitude_vector.default.weight", "default", f"{PREFIX}{Q}.lora_magnitude_vector"),  # no .weight
    ("classifier.modules_to_save.default.weight", "default", f"{PREFIX}classifier.weight"),
    ("bert.pooler.dense.modules_to_save.a.bias", "a", f"{PREFIX}bert.pooler.dense.bias"),
    ("conv.lora_A.default.weight", "default", f"{PREFIX}conv.lora_A.weight"),  # a top-level module
]


@pytest.mark.parametrize(("model_key", "name", "file_key"), TABLE)
def test_model_key_to_file_key(model_key: str, name: str, file_key: str) -> None:
    assert to_file_key(model_key, name) == file_key


@pytest.mark.parametrize(("model_key", "name", "file_key"), TABLE)
def test_file_key_back_to_model_key(model_key: str, name: str, file_key: str) -> None:
    saved = frozenset({"classifier", "bert.pooler.dense"})
    assert to_model_key(file_key, name, saved) == model_key


@pytest.mark.parametrize(
    "model_key",
    [
        f"{Q}.base_layer.weight",  # the frozen base weight
        f"{Q}.lora_A.other.weight",  # another adapter's tensor
        "model.embed_tokens.lora_embedding_A.other",
        f"{Q}.lora_magnitude_vector.other.weight",
        "classifier.modules_to_save.other.weight",
        "classifier.original_module.weight",
        "lm_head.weight",
        "model.norm.weight",
    ],
)
def test_keys_of_other_adapters_and_the_base_have_no_file_key(model_key: str) -> None:
    assert to_file_key(model_key, "default") is None


@pytest.mark.parametrize("name", ["q", "proj", "self", "layers", "0", "model", "lora", "weight", "default_2"])
def test_adapter_names_that_are_parts_of_module_names(name: str) -> None:
    """PEFT once cut adapter names out of module paths by substring; keys here are matched by whole segment."""
    model_key = f"model.layers.0.self_attn.q_proj.lora_A.{name}.weight"
    file_key = to_file_key(model_key, name)
    assert file_key == f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight"
    assert to_model_key(file_key, name) == model_key
    assert to_file_key(f"model.layers.0.self_attn.q_proj.lora_A.{name}x.weight", name) is None


def test_modules_to_save_key_round_trip_needs_the_wrapper_paths() -> None:
    """A head is saved under its own key; only the list of wrapped modules tells it apart from a base tensor."""
    file_key = f"{PREFIX}score.weight"
    assert to_model_key(file_key, "a", frozenset({"score"})) == "score.modules_to_save.a.weight"
    assert to_model_key(file_key, "a") == "score.weight"
    # a nested module whose path extends a wrapped one's
    nested = f"{PREFIX}head.dense.weight"
    assert to_model_key(nested, "a", frozenset({"head"})) == "head.modules_to_save.a.dense.weight"


def test_peft_quirk_keys_of_wrapped_modules() -> None:
    """bias='all' with modules_to_save: PEFT also writes <m>.modules_to_save.bias (no adapter name) and
    <m>.original_module.bias. The first is the copy's bias; the second is the original's own key."""
    saved = frozenset({"classifier"})
    assert to_model_key(f"{PREFIX}classifier.modules_to_save.bias", "a", saved) == "classifier.modules_to_save.a.bias"
    assert to_model_key(f"{PREFIX}classifier.original_module.bias", "a", saved) == "classifier.original_module.bias"


@pytest.mark.parametrize("mode_key", ["bert.encoder.layer.0.attention.self.query.base_layer.bias", "classifier.bias"])
def test_base_biases_keep_their_model_key(mode_key: str) -> None:
    file_key = base_bias_file_key(mode_key)
    assert file_key == PREFIX + mode_key
    assert to_model_key(file_key, "default") == mode_key


def test_magnitude_vector_candidates_cover_module_and_bare_parameter() -> None:
    file_key = f"{PREFIX}{Q}.lora_magnitude_vector"
    assert model_key_candidates(file_key, "d") == (
        f"{Q}.lora_magnitude_vector.d.weight",
        f"{Q}.lora_magnitude_vector.d",
    )
    assert to_file_key(f"{Q}.lora_magnitude_vector.d", "d") == file_key  # the bare-parameter form saves the same


def test_keys_without_peft_prefix_are_accepted() -> None:
    assert to_model_key(f"{Q}.lora_A.weight", "default") == f"{Q}.lora_A.default.weight"


@pytest.mark.parametrize(
    ("file_key", "layer", "role"),
    [
        (f"{PREFIX}{Q}.lora_A.weight", Q, "lora_A"),
        (f"{PREFIX}{Q}.lora_B.bias", Q, "lora_B.bias"),
        (f"{PREFIX}model.embed_tokens.lora_embedding_B", "model.embed_tokens", "lora_embedding_B"),
        (f"{PREFIX}{Q}.lora_magnitude_vector", Q, "lora_magnitude_vector"),
        (f"{PREFIX}classifier.weight", "classifier", "weight"),
    ],
)
def test_layer_path_and_role_for_messages(file_key: str, layer: str, role: str) -> None:
    assert layer_path_of(file_key) == layer
    assert tensor_role(file_key) == role


# -- against PEFT: the keys PEFT writes for a model it built are the keys lorakit computes ---------------------------
# PEFT itself mishandles a name equal to a whole path segment ("layers", "model", BERT's "self"): it filters keys by
# ".<name>.", so those names are tested above against the tables only
@pytest.mark.parametrize("names", [("default", "other"), ("q", "proj"), ("lora", "attn")])
@pytest.mark.parametrize("kind", ["plain", "dora", "bias_and_head"])
def test_file_keys_match_peft(peft, names: tuple[str, str], kind: str) -> None:
    from peft.utils import get_peft_model_state_dict

    from tests.helpers import tiny_bert_seq_cls, tiny_llama

    if kind == "bias_and_head":
        base, settings = tiny_bert_seq_cls(), dict(target_modules=["query", "value"], modules_to_save=["classifier"],
                                                   lora_bias=True)
    else:
        targets = ["q_proj", "v_proj", "embed_tokens"] if kind == "plain" else ["q_proj", "down_proj"]
        base, settings = tiny_llama(), dict(target_modules=targets, use_dora=kind == "dora")
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, **settings), adapter_name=names[0])
    model.add_adapter(names[1], peft.LoraConfig(r=3, **settings))
    model_keys = list(model.base_model.model.state_dict())  # lorakit's model keys: the same module tree
    for name in names:
        expected = set(get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False))
        ours = {to_file_key(k, name) for k in model_keys} - {None}
        assert ours == expected
        saved = frozenset({"classifier"})
        assert {to_model_key(k, name, saved) for k in expected} == {k for k in model_keys if to_file_key(k, name)}
