"""LoraConfig: what to adapt and how. Field names are PEFT's, so adapter_config.json moves between tools."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lorakit.errors import ConfigError
from lorakit.layers.lowrank import lora_scaling
from lorakit.variants.registry import peft_types

INIT_METHODS = ("gaussian", "pissa", "olora")  # besides True / False; "pissa_niter_<k>" is fast PiSSA
BIAS_MODES = ("none", "all", "lora_only")

# Keys PEFT writes into adapter_config.json that lorakit does not act on. Each is accepted while it holds
# PEFT's "feature off" value; a feature that is on and that lorakit lacks is refused, never silently dropped.
# Keys not listed here (from newer PEFT versions) follow the same rule: off (None / False / {} / []) is fine.
PEFT_ALWAYS_IGNORED = {"peft_version", "auto_mapping", "revision", "megatron_core", "qalora_group_size"}
PEFT_OFF_VALUES: dict[str, object] = {"use_qalora": False, "ensure_weight_tying": False, "loftq_config": {}}
# PEFT inits that only choose the first A / B and leave the base weight alone: an adapter file's tensors replace
# them, so such a file loads as plain LoRA (their settings, e.g. eva_config, describe the init only)
INIT_ONLY_METHODS = ("eva", "orthogonal", "mica")
# PEFT trains and saves a task's head in full (it adds these names to modules_to_save, then expects the head's
# weights in every adapter file of that task_type); lorakit does the same so its files load in PEFT.
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",),
}


@dataclass
class LoraConfig:
    """Settings of one LoRA adapter: W' = W + scaling * B @ A, scaling = lora_alpha / r (or / sqrt(r))."""

    r: int = 8  # rank of the update B @ A
    lora_alpha: float = 8  # scaling numerator; scaling = lora_alpha / r
    # Which layers get an adapter: a list of names (exact, or a dotted suffix such as "q_proj"), a regex
    # string that must match the whole module path, or "all-linear". None: the architecture's default.
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None  # same forms as target_modules; wins over it
    lora_dropout: float = 0.0  # dropout on the adapter's input only
    fan_in_fan_out: bool = False  # weight stored (in, out); set automatically for transformers' Conv1D
    bias: str = "none"  # "none" | "all" (train every bias) | "lora_only" (biases of adapted layers)
    use_rslora: bool = False  # rank-stabilized scaling lora_alpha / sqrt(r)
    modules_to_save: list[str] | None = None  # modules trained in full and saved (e.g. a classifier head)
    # True: A Kaiming-uniform, B zero (a no-op at start); False: both random (tests); "gaussian": A ~ N(0, 1/r);
    # "pissa" / "pissa_niter_<k>": principal singular vectors of W (base weight becomes the residual);
    # "olora": QR of W (base weight becomes the residual).
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None  # only these layer indices (needs a layers pattern)
    layers_pattern: list[str] | str | None = None  # name of the layer list, e.g. "layers" or "h"
    rank_pattern: dict[str, int] = field(default_factory=dict)  # regex on module path -> rank
    alpha_pattern: dict[str, float] = field(default_factory=dict)  # regex on module path -> lora_alpha
    use_dora: bool = False  # weight-decomposed LoRA (magnitude vector + direction)
    lora_bias: bool = False  # a trainable bias on lora_B
    task_type: str | None = None  # PEFT's task label, e.g. "CAUSAL_LM", "SEQ_CLS"
    base_model_name_or_path: str | None = None
    inference_mode: bool = False  # adapter weights frozen
    peft_type: str = "LORA"
    PEFT_TYPE: ClassVar[str] = "LORA"  # the peft_type this class describes (a variant's subclass sets its own)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"r={self.r!r}: the rank must be a positive integer, e.g. r=8")
        if not isinstance(self.lora_alpha, (int, float)) or not math.isfinite(self.lora_alpha):
            raise ConfigError(f"lora_alpha={self.lora_alpha!r}: expected a finite number, e.g. lora_alpha=16")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout!r}: expected a probability in [0, 1)")
        if self.bias not in BIAS_MODES:
            raise ConfigError(f"bias={self.bias!r}: expected one of {list(BIAS_MODES)}")
        init = self.init_lora_weights
        if not isinstance(init, bool) and init not in INIT_METHODS and not _is_pissa_niter(init):
            raise ConfigError(
                f"init_lora_weights={init!r}: expected True, False, {', '.join(map(repr, INIT_METHODS))} "
                "or 'pissa_niter_<k>'"
            )
        if self.peft_type != self.PEFT_TYPE:  # a variant's config class declares its own (variants/registry.py)
            raise ConfigError(f"peft_type={self.peft_type!r}: this config describes a LoRA adapter "
                              f"({self.PEFT_TYPE!r})")
        if isinstance(self.target_modules, str) and self.target_modules.lower() == "all-linear":
            self.target_modules = "all-linear"  # PEFT accepts any case
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            _check_regex("target_modules", self.target_modules)
        if isinstance(self.exclude_modules, str):
            _check_regex("exclude_modules", self.exclude_modules)
        for key, value in self.rank_pattern.items():
            _check_regex("rank_pattern", key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"rank_pattern[{key!r}]={value!r}: ranks must be positive integers")
        for key in self.alpha_pattern:
            _check_regex("alpha_pattern", key)
        if self.layers_to_transform is not None and isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        heads = TASK_HEADS.get(self.task_type or "", ())
        if heads:
            saved = list(self.modules_to_save or [])
            self.modules_to_save = saved + [h for h in heads if h not in saved]

    # -- per-module values -----------------------------------------------------------------------------
    def rank_for(self, module_path: str) -> int:
        return _pattern_value(self.rank_pattern, module_path, self.r)

    def alpha_for(self, module_path: str) -> float:
        return _pattern_value(self.alpha_pattern, module_path, self.lora_alpha)

    def scaling_for(self, module_path: str) -> float:
        return lora_scaling(self.alpha_for(module_path), self.rank_for(module_path), self.use_rslora)

    # -- dict / file round trip ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(out["target_modules"], list):
            out["target_modules"] = sorted(out["target_modules"])
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraConfig:
        """Build from user input (YAML, CLI): unknown keys are an error; values are coerced by field type."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown LoRA config key(s) {unknown}; valid keys: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: coerce(k, v, hints[k]) for k, v in values.items()})

    @classmethod
    def from_peft_dict(cls, values: dict[str, Any]) -> tuple[LoraConfig, dict[str, Any]]:
        """Build from an adapter_config.json (PEFT's or lorakit's). Returns (config, extra keys kept aside).

        Keys of PEFT features lorakit lacks are accepted only while the feature is off."""
        values = dict(values)
        extra = {k: values.pop(k) for k in list(values) if k.startswith("lorakit_")}
        if values.get("init_lora_weights") in INIT_ONLY_METHODS:
            values["init_lora_weights"] = True
            values.pop("eva_config", None)
        known = set(cls.field_names())
        for key in sorted(set(values) - known):
            value = values.pop(key)
            if key in PEFT_ALWAYS_IGNORED:
                continue
            if value not in (PEFT_OFF_VALUES.get(key), None, {}, [], False):
                raise ConfigError(
                    f"adapter_config.json sets {key}={value!r}, a PEFT feature lorakit does not support; "
                    "load this adapter with PEFT, or re-save it without that feature"
                )
        if values.get("peft_type", cls.PEFT_TYPE) != cls.PEFT_TYPE:
            raise ConfigError(
                f"adapter_config.json has peft_type={values['peft_type']!r}; only LoRA adapters ('LORA') are read "
                f"here (lorakit.load_adapter reads every registered peft_type: {peft_types()})"
            )
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = sorted(values["target_modules"])
        try:
            return cls.from_dict(values), extra
        except TypeError as exc:  # a field of the wrong type that coercion could not fix
            raise ConfigError(f"adapter_config.json: {exc}") from None


def settings_from_dict(klass: type, values: dict[str, Any], section: str) -> Any:
    """A settings dataclass from a mapping; an unknown key is an error that lists the valid ones."""
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {unknown}; valid keys: {sorted(known)}")
    return klass(**values)


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Coerce a YAML / command-line value to a field's declared type (YAML reads 3e-4 as a string)."""
    if value is None:
        return None
    options = _type_options(hint)
    if isinstance(value, str):  # strings a str option would otherwise swallow whole
        text = value.strip()
        if bool in options and text.lower() in BOOL_WORDS:  # init_lora_weights: bool | str
            return BOOL_WORDS[text.lower()]
        if list in options and _NAME_LIST.fullmatch(text):  # target_modules: "q_proj,v_proj" is a list, not a regex
            value = [v.strip() for v in text.split(",")]
    converted = value if type(value) in options else _FAIL
    for option in options if converted is _FAIL else ():
        converted = _try_convert(value, option)
        if converted is not _FAIL:
            break
    if converted is _FAIL:
        names = " | ".join(getattr(o, "__name__", str(o)) for o in options)
        if options == [bool]:
            names = "a boolean (true/false, yes/no, on/off, 1/0)"
        raise ConfigError(f"{name}={value!r}: expected {names}")
    item = _list_item_type(hint)
    if isinstance(converted, list) and item is not None:  # layers_to_transform "0,1" -> [0, 1]
        converted = [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(converted)]
    return converted


_FAIL = object()
# the spellings a boolean setting takes (YAML 1.1's words, any case, and 1 / 0)
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_NAME_LIST = re.compile(r"[\w.\-]+(\s*,\s*[\w.\-]+)+")


def _list_item_type(hint: Any) -> Any:
    """X for a hint holding list[X] (possibly inside a union), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((t for t in map(_list_item_type, typing.get_args(hint)) if t is not None), None)
    args = typing.get_args(hint)
    return args[0] if typing.get_origin(hint) is list and args else None


def _type_options(hint: Any) -> list[Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return [o for arg in typing.get_args(hint) for o in _type_options(arg)]
    if origin is not None:
        return [origin]
    return [hint]


def _try_convert(value: Any, target: Any) -> Any:
    if target is type(None):
        return _FAIL
    try:
        if target is bool:
            if isinstance(value, int) and value in (0, 1):  # YAML reads `1` as an int
                return bool(value)
            return BOOL_WORDS.get(value.strip().lower(), _FAIL) if isinstance(value, str) else _FAIL
        if target is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
                return int(value)
            return _FAIL
        if target is float:
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                return float(value)
            return _FAIL
        if target is str:
            return value if isinstance(value, str) else _FAIL
        if target is list:
            if isinstance(value, (tuple, set)):
                return list(value)
            if isinstance(value, str):  # "a,b" -> ["a", "b"]; one name -> [name]
                return [v.strip() for v in value.split(",") if v.strip()]
            return _FAIL
        if target is dict:
            return dict(value) if isinstance(value, dict) else _FAIL
    except (TypeError, ValueError):
        return _FAIL
    return _FAIL


def _is_pissa_niter(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"pissa_niter_\d+", value) is not None


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{name}: {pattern!r} is not a valid regular expression ({exc})") from None


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    """First key that matches a dotted suffix of the module path wins (PEFT's rule, so files agree)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default
