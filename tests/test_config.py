"""LoraConfig: validation with clear errors, coercion of YAML / CLI strings, PEFT adapter_config.json input."""

import math

import pytest

from lorakit import LoraConfig
from lorakit.errors import ConfigError, LorakitError


@pytest.mark.parametrize("r", [0, -4])
def test_non_positive_rank_is_refused(r: int) -> None:
    with pytest.raises(ConfigError, match=rf"r={r}: the rank must be a positive integer"):
        LoraConfig(r=r)


@pytest.mark.parametrize("r", [2.5, "8", True, None])
def test_non_integer_rank_is_refused(r) -> None:
    with pytest.raises(ConfigError, match=r"the rank must be a positive integer"):
        LoraConfig(r=r)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range_is_refused(p: float) -> None:
    with pytest.raises(ConfigError, match=r"lora_dropout=.*\[0, 1\)"):
        LoraConfig(lora_dropout=p)


def test_bad_bias_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"bias='some'.*\['none', 'all', 'lora_only'\]"):
        LoraConfig(bias="some")


@pytest.mark.parametrize("init", ["kaiming", "pissa_niter_", "PISSA", 3])
def test_bad_init_lists_the_choices(init) -> None:
    with pytest.raises(ConfigError, match=r"init_lora_weights=.*expected True, False, 'gaussian'"):
        LoraConfig(init_lora_weights=init)


@pytest.mark.parametrize("init", [True, False, "gaussian", "pissa", "pissa_niter_4", "olora"])
def test_valid_inits_are_accepted(init) -> None:
    assert LoraConfig(init_lora_weights=init).init_lora_weights == init


@pytest.mark.parametrize(("field", "value"), [
    ("target_modules", "q_proj("),
    ("exclude_modules", "[a-"),
    ("rank_pattern", {"(unclosed": 4}),
    ("alpha_pattern", {"*bad": 4}),
])
def test_bad_regex_is_refused(field: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: .* is not a valid regular expression"):
        LoraConfig(**{field: value})


def test_rank_pattern_values_must_be_positive_ints() -> None:
    with pytest.raises(ConfigError, match=r"rank_pattern\['q'\]=0"):
        LoraConfig(rank_pattern={"q": 0})


def test_non_finite_alpha_is_refused() -> None:
    with pytest.raises(ConfigError, match="lora_alpha"):
        LoraConfig(lora_alpha=math.inf)


def test_errors_are_lorakit_and_value_errors() -> None:
    with pytest.raises(LorakitError):
        LoraConfig(r=0)
    with pytest.raises(ValueError):
        LoraConfig(r=0)


def test_unknown_keys_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        LoraConfig.from_dict({"rank": 8, "lora_alpha": 16})
    message = str(info.value)
    assert "['rank']" in message
    assert all(key in message for key in ("'r'", "'lora_alpha'", "'target_modules'", "'lora_dropout'"))


def test_from_dict_coerces_yaml_strings() -> None:
    cfg = LoraConfig.from_dict({
        "r": "8", "lora_alpha": "3e-4", "lora_dropout": "0.05", "use_rslora": "true", "fan_in_fan_out": "no",
        "target_modules": "q_proj,v_proj", "layers_to_transform": "1",
    })
    assert cfg.r == 8 and isinstance(cfg.r, int)
    assert cfg.lora_alpha == pytest.approx(3e-4)
    assert cfg.lora_dropout == pytest.approx(0.05)
    assert cfg.use_rslora is True and cfg.fan_in_fan_out is False
    assert cfg.target_modules == ["q_proj", "v_proj"]
    assert cfg.layers_to_transform == [1]


def test_from_dict_keeps_a_single_regex_string() -> None:
    assert LoraConfig.from_dict({"target_modules": r".*\.q_proj"}).target_modules == r".*\.q_proj"
    assert LoraConfig.from_dict({"target_modules": "all-linear"}).target_modules == "all-linear"
    assert LoraConfig(target_modules="ALL-Linear").target_modules == "all-linear"  # PEFT ignores the case


def test_init_lora_weights_string_stays_a_method_name() -> None:
    assert LoraConfig.from_dict({"init_lora_weights": "pissa"}).init_lora_weights == "pissa"
    assert LoraConfig.from_dict({"init_lora_weights": "false"}).init_lora_weights is False


def test_from_dict_reports_uncoercible_values() -> None:
    with pytest.raises(ConfigError, match=r"r='eight': expected int"):
        LoraConfig.from_dict({"r": "eight"})
    with pytest.raises(ConfigError, match=r"use_rslora='maybe'"):
        LoraConfig.from_dict({"use_rslora": "maybe"})


def test_integral_float_rank_is_coerced_but_fraction_is_not() -> None:
    assert LoraConfig.from_dict({"r": 8.0}).r == 8
    with pytest.raises(ConfigError, match=r"r=8.5"):
        LoraConfig.from_dict({"r": 8.5})


def test_dict_round_trip() -> None:
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "q_proj"], rank_pattern={"q": 2})
    again = LoraConfig.from_dict(cfg.to_dict())
    assert again == LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"q": 2})


def test_scaling_for_uses_patterns_and_rslora() -> None:
    cfg = LoraConfig(r=16, lora_alpha=32, rank_pattern={"q_proj": 4}, alpha_pattern={"v_proj": 8}, use_rslora=True)
    assert cfg.scaling_for("model.layers.0.self_attn.q_proj") == pytest.approx(32 / math.sqrt(4))
    assert cfg.scaling_for("model.layers.0.self_attn.v_proj") == pytest.approx(8 / math.sqrt(16))
    assert cfg.scaling_for("model.layers.0.self_attn.k_proj") == pytest.approx(32 / 4)


# -- adapter_config.json written by PEFT ---------------------------------------------------------------------
PEFT_021 = {  # what PEFT 0.21 writes for a plain LoRA adapter: many keys of features that are off
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": "tiny", "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
    "loftq_config": {}, "lora_alpha": 16, "lora_bias": False, "lora_dropout": 0.05, "megatron_config": None,
    "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "peft_version": "0.21.2",
    "qalora_group_size": 16, "r": 8, "rank_pattern": {}, "revision": None, "target_modules": ["v_proj", "q_proj"],
    "target_parameters": None, "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_dora": False,
    "use_qalora": False, "use_rslora": False,
}


def test_from_peft_dict_accepts_extra_keys_that_are_off() -> None:
    cfg, extra = LoraConfig.from_peft_dict(PEFT_021)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.task_type) == (8, 16, 0.05, "CAUSAL_LM")
    assert cfg.target_modules == ["q_proj", "v_proj"]
    assert extra == {}


@pytest.mark.parametrize(("key", "value"), [
    ("layer_replication", [[0, 1]]),
    ("use_qalora", True),
    ("trainable_token_indices", [1, 2]),
    ("target_parameters", ["experts.gate_up_proj"]),
])
def test_from_peft_dict_refuses_an_enabled_unsupported_feature(key: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"{key}=.*PEFT feature lorakit does not support"):
        LoraConfig.from_peft_dict({**PEFT_021, key: value})


def test_from_peft_dict_keeps_lorakit_keys_aside() -> None:
    _, extra = LoraConfig.from_peft_dict({**PEFT_021, "lorakit_version": "0.1.0"})
    assert extra == {"lorakit_version": "0.1.0"}


def test_from_peft_dict_refuses_other_peft_types() -> None:
    with pytest.raises(ConfigError, match="peft_type='IA3'"):
        LoraConfig.from_peft_dict({**PEFT_021, "peft_type": "IA3"})


def test_from_dict_coerces_list_items_and_single_names() -> None:
    cfg = LoraConfig.from_dict({"layers_to_transform": "0,1", "modules_to_save": "classifier"})
    assert cfg.layers_to_transform == [0, 1]
    assert cfg.modules_to_save == ["classifier"]
    with pytest.raises(ConfigError, match=r"layers_to_transform\[1\]='x'"):
        LoraConfig.from_dict({"layers_to_transform": "0,x"})
