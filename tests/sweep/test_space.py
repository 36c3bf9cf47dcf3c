"""The search space: parsing, what each trial draws, the overrides it gives the run, the grid, and clear refusals."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from lorakit.errors import ConfigError
from lorakit.sweep.space import load_space, parse_space
from lorakit.sweep.study import SAMPLERS
from lorakit.train.config import load_config

SPACE = {
    "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "lora.r": [4, 8, 16],
    "lora.alpha_ratio": [1, 2],
    "lora.target_modules": {"choices": {"qv": ["query", "value"], "all": "all-linear"}},
    "lora.lora_dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
    "training.max_steps": {"type": "int", "low": 50, "high": 200, "step": 50},
    "lora.use_dora": [False, True],
}


def config_with(overrides: list[str]):
    return load_config(None, overrides, base="model: {task: seq-cls}\nlora: {r: 8}\n")


def test_draws_stay_in_the_space_and_become_valid_overrides():
    space = parse_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    base = config_with([]).to_dict()
    for _ in range(25):
        trial = study.ask()
        drawn = space.suggest(trial)
        assert 1e-4 <= drawn["training.lr"] <= 1e-2
        assert drawn["lora.r"] in (4, 8, 16) and drawn["lora.target_modules"] in ("qv", "all")
        assert any(drawn["lora.lora_dropout"] == pytest.approx(v) for v in (0.0, 0.1, 0.2))
        assert drawn["training.max_steps"] in (50, 100, 150, 200)
        cfg = config_with(space.overrides(drawn, base))  # what the trial's run gets
        assert cfg.training.lr == pytest.approx(drawn["training.lr"])
        assert cfg.lora.r == drawn["lora.r"]
        assert cfg.lora.lora_alpha == drawn["lora.alpha_ratio"] * drawn["lora.r"]  # the ratio, applied to r
        expected = ["query", "value"] if drawn["lora.target_modules"] == "qv" else "all-linear"
        assert cfg.lora.target_modules == expected
        assert cfg.lora.use_dora is drawn["lora.use_dora"]
        study.tell(trial, 0.0)


def test_alpha_ratio_without_r_uses_the_base_rank():
    space = parse_space({"lora.alpha_ratio": [0.5, 4]})
    assert space.overrides({"lora.alpha_ratio": 4}, config_with([]).to_dict()) == ["lora.lora_alpha=32"]


def test_list_choices_get_readable_labels():
    space = parse_space({"lora.target_modules": [["query", "value"], ["query", "key", "value"]]})
    assert list(space.params[0].choices) == ["query,value", "query,key,value"]
    assert space.overrides({"lora.target_modules": "query,key,value"}, {}) == \
        ['lora.target_modules=["query", "key", "value"]']


def test_grid_enumerates_every_point():
    space = parse_space({k: SPACE[k] for k in ("lora.r", "lora.target_modules", "lora.lora_dropout",
                                                "training.max_steps")})
    grid = space.grid()
    assert grid["lora.lora_dropout"] == pytest.approx([0.0, 0.1, 0.2])
    assert grid["training.max_steps"] == [50, 100, 150, 200]
    assert space.grid_size() == 3 * 2 * 3 * 4 == math.prod(len(v) for v in grid.values())
    # Optuna's grid sampler visits each point once
    study = optuna.create_study(sampler=SAMPLERS["grid"](space, 0))
    seen = set()
    for _ in range(space.grid_size()):
        trial = study.ask()
        seen.add(tuple(sorted(space.suggest(trial).items())))
        study.tell(trial, 0.0)
    assert len(seen) == space.grid_size()


def test_grid_refuses_a_continuous_range():
    with pytest.raises(ConfigError, match=r"training.lr is a continuous range.*--sampler tpe"):
        parse_space(SPACE).grid()


@pytest.mark.parametrize(("spec", "message"), [
    ({"lr": [1, 2]}, "expected a config key as section.key"),
    ({"training.lr": 3}, "expected a list of choices or a mapping"),
    ({"training.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, "low .* must be below high"),
    ({"training.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
    ({"training.lr": {"type": "float", "low": 1e-4, "high": 1, "log": True, "step": 0.1}}, "cannot have a step"),
    ({"training.lr": {"type": "float", "low": "a", "high": 1}}, "needs numbers low and high"),
    ({"training.lr": {"type": "float", "low": 0, "high": 1, "scale": 2}}, r"unknown setting\(s\) \['scale'\]"),
    ({"training.max_steps": {"type": "int", "low": 1.5, "high": 4}}, "an int range needs whole numbers"),
    ({"training.lr": {"type": "normal"}}, "expected 'choices' or 'type: int | float'"),
    ({"lora.r": []}, "no choices"),
    ({"lora.r": [4, 4]}, "the choices repeat a value"),
    ({"lora.target_modules": [{"a": 1}]}, "name complex choices"),
    ([], "expected a mapping of section.key"),
])
def test_bad_spaces_are_refused_in_one_line(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_space(spec, "space.yaml")
    assert "\n" not in str(info.value)


def test_load_space_reads_yaml_and_names_missing_or_broken_files(tmp_path):
    good = tmp_path / "space.yaml"
    good.write_text(yaml.safe_dump({"lora.r": [4, 8]}))
    assert load_space(good).keys == ["lora.r"] and load_space(good).source == str(good)
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora.r: [4, 8\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_space(broken)


SHIPPED = {"demo.yaml": "configs/demo.yaml", "lr-rank.yaml": "configs/alpaca-tiny.yaml"}


@pytest.mark.parametrize(("space", "config"), SHIPPED.items())
def test_shipped_spaces_fit_the_configs_they_name(space, config):
    from lorakit.sweep.run import check_space

    root = Path(__file__).resolve().parents[2]
    assert sorted(p.name for p in (root / "configs" / "spaces").glob("*.yaml")) == sorted(SHIPPED)
    loaded = load_space(root / "configs" / "spaces" / space)
    assert config in (root / "configs" / "spaces" / space).read_text()  # its header shows the command
    check_space([str(root / config)], loaded)  # every value it can draw makes a valid config
