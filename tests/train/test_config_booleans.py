"""Every boolean-like setting of a training config takes the usual spellings (true/false, yes/no, on/off, 1/0,
any case) from YAML and from `section.key=value` overrides; any other word is a one-line error naming the key."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from lorakit.config import _type_options
from lorakit.errors import ConfigError
from lorakit.train.config import SECTIONS, load_config

TRUE = ["true", "True", "TRUE", "yes", "Yes", "on", "ON", "1"]
FALSE = ["false", "False", "no", "NO", "off", "Off", "0"]


def boolean_fields() -> list[tuple[str, str]]:
    """(section, key) of every field whose type is bool or a union holding bool (e.g. bool | str)."""
    found = []
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            if bool in _type_options(typing.get_type_hints(klass)[f.name]):
                found.append((section, f.name))
    return found


FIELDS = boolean_fields()


def test_the_boolean_fields_include_the_unions_with_bool():
    assert ("output.tensorboard" in {f"{s}.{k}" for s, k in FIELDS}
            and ("lora", "init_lora_weights") in FIELDS and ("output", "mlflow") in FIELDS)


def value_of(cfg, section: str, key: str):
    value = getattr(getattr(cfg, section), key)
    return {"true": True, "false": False}.get(value, value) if key == "tensorboard" else value


@pytest.mark.parametrize(("section", "key"), FIELDS)
@pytest.mark.parametrize(("word", "expected"), [(w, True) for w in TRUE] + [(w, False) for w in FALSE])
def test_override_spellings(section, key, word, expected):
    cfg = load_config(None, [f"{section}.{key}={word}"], base="")
    assert value_of(cfg, section, key) is expected


@pytest.mark.parametrize(("section", "key"), FIELDS)
@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize(("word", "expected"), [("yes", True), ("On", True), ("1", True), ("off", False),
                                                  ("0", False), ("False", False)])
def test_yaml_spellings(tmp_path, section, key, quoted, word, expected):
    path = tmp_path / "c.yaml"
    value = f'"{word}"' if quoted else word
    path.write_text(f"{section}:\n  {key}: {value}\n", encoding="utf-8")
    assert value_of(load_config(path), section, key) is expected


def test_tensorboard_from_yaml_true_is_on(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output": {"tensorboard": True}}), encoding="utf-8")
    assert load_config(path).output.tensorboard == "true"
    assert load_config(None, ["output.tensorboard=auto"], base="").output.tensorboard == "auto"


@pytest.mark.parametrize(("section", "key"), FIELDS)
def test_a_word_that_is_not_a_boolean_is_a_clear_error(section, key):
    with pytest.raises(ConfigError, match=rf"{section}(\.|: ){key}='maybe'") as info:
        load_config(None, [f"{section}.{key}=maybe"], base="")
    assert "\n" not in str(info.value)
    if key != "init_lora_weights":  # init_lora_weights also takes method names; its message lists those
        assert "true/false" in str(info.value)


def test_two_is_not_a_boolean():
    with pytest.raises(ConfigError, match=r"output\.mlflow=2"):
        load_config(None, ["output.mlflow=2"], base="")
