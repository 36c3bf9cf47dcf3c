"""The search space of a sweep: which config keys to try and how to draw them (SPACE.yaml), as Optuna parameters.

    training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}    # log-uniform
    lora.r: [4, 8, 16]                                                  # a list: the choices
    lora.alpha_ratio: [1, 2]                                            # lora.lora_alpha = ratio * lora.r
    lora.target_modules: {choices: {qv: [query, value], all: all-linear}}   # named choices for lists
    lora.lora_dropout: {type: float, low: 0.0, high: 0.2, step: 0.1}
    training.max_steps: {type: int, low: 50, high: 200, step: 50}

A key is any `section.key` of the train config (what `lorakit train ... section.key=value` takes). Optuna's
parameters hold plain values only, so a choice that is a list or a mapping gets a label: its name where the choices
are named, else its items joined by commas ("query,value"); the trial records the label, the run gets the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lorakit.errors import ConfigError

ALPHA_RATIO = "lora.alpha_ratio"  # not a config key: lora.lora_alpha = ratio * lora.r (r drawn or from the config)
PLAIN = (bool, int, float, str, type(None))


@dataclass
class Param:
    """One searched key: choices (labels -> values) or a numeric range."""

    key: str
    kind: str  # "choices" | "int" | "float"
    choices: dict[Any, Any] = field(default_factory=dict)  # label (what Optuna stores) -> the config value
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def grid_values(self) -> list[Any] | None:
        """Every value a grid visits (labels for choices), or None where the range is continuous."""
        if self.kind == "choices":
            return list(self.choices)
        if self.step is None and self.kind == "float":
            return None
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def draw(self, trial: Any) -> Any:
        """This parameter's value on an Optuna trial (the sampler chooses; a label for choices)."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def config_value(self, drawn: Any) -> Any:
        return self.choices[drawn] if self.kind == "choices" else drawn


@dataclass
class SearchSpace:
    params: list[Param]
    source: str = "space"
    raw: dict[str, Any] = field(default_factory=dict)  # the file's mapping (a resumed study must have the same)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's space; refuses a continuous range (a grid cannot enumerate it)."""
        grid = {}
        for p in self.params:
            values = p.grid_values()
            if values is None:
                raise ConfigError(f"{self.source}: {p.key} is a continuous range, which a grid cannot enumerate; "
                                  f"give it a step or a list of choices, or use --sampler tpe / random")
            grid[p.key] = values
        return grid

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw every parameter on an Optuna trial: {key: label or number} (what the study records)."""
        return {p.key: p.draw(trial) for p in self.params}

    def overrides(self, drawn: dict[str, Any], base: dict[str, Any]) -> list[str]:
        """The `section.key=value` overrides for drawn parameters; `base` is the base config (for lora.r when the
        alpha ratio is drawn and r is not)."""
        values = {p.key: p.config_value(drawn[p.key]) for p in self.params if p.key in drawn}
        if ALPHA_RATIO in values:
            ratio = values.pop(ALPHA_RATIO)
            rank = values.get("lora.r", base.get("lora", {}).get("r", 8))
            values["lora.lora_alpha"] = ratio * rank
        return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def load_space(path: str | Path) -> SearchSpace:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"search space {file} does not exist (a YAML file of section.key: choices or range)")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {file} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_space(values, str(file))


def parse_space(values: Any, source: str = "space") -> SearchSpace:
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{source}: expected a mapping of section.key to choices or a range, e.g. "
                          f"'lora.r: [4, 8, 16]' and 'training.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}'")
    return SearchSpace([_param(str(key), spec, source) for key, spec in values.items()], source, values)


def _param(key: str, spec: Any, source: str) -> Param:
    where = f"{source}: {key}"
    if "." not in key:
        raise ConfigError(f"{where}: expected a config key as section.key (e.g. lora.r, training.lr)")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of choices or a mapping with type/low/high (got {spec!r})")
    if "choices" in spec:
        return Param(key, "choices", _labels(spec["choices"], where))
    kind = spec.get("type")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: expected 'choices' or 'type: int | float' with low and high (got {spec})")
    unknown = set(spec) - {"type", "low", "high", "step", "log"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; a range takes type, low, high, step, log")
    try:
        low, high = float(spec["low"]), float(spec["high"])
        step = None if spec.get("step") is None else float(spec["step"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: a range needs numbers low and high (and an optional step)") from None
    log = bool(spec.get("log", False))
    if not low < high:
        raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got {low:g})")
    if log and step is not None:
        raise ConfigError(f"{where}: a log range cannot have a step (Optuna draws it continuously)")
    if kind == "int" and not (low.is_integer() and high.is_integer() and (step is None or step.is_integer())):
        raise ConfigError(f"{where}: an int range needs whole numbers")
    return Param(key, kind, low=low, high=high, step=step, log=log)


def _labels(choices: Any, where: str) -> dict[Any, Any]:
    if isinstance(choices, dict):
        labels = {str(name): value for name, value in choices.items()}
    elif isinstance(choices, list):
        labels = {_label(value): value for value in choices}
        if len(labels) != len(choices):
            raise ConfigError(f"{where}: the choices repeat a value ({choices})")
    else:
        raise ConfigError(f"{where}: choices must be a list or a mapping of names to values")
    if not labels:
        raise ConfigError(f"{where}: no choices")
    return labels


def _label(value: Any) -> Any:
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, list) and all(isinstance(item, PLAIN) for item in value):
        return ",".join(str(item) for item in value)
    raise ConfigError(f"choice {value!r}: name complex choices, e.g. 'choices: {{small: {value!r}}}'")
