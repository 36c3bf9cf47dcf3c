"""How the demo builds its three runs: each method's own settings, then the user's overrides (for all three),
then its own output folder; a user's training.method is refused."""

from __future__ import annotations

import pytest

from lorakit.demo.run import method_overrides
from lorakit.demo.settings import demo_methods
from lorakit.demo.worker import demo_config
from lorakit.errors import ConfigError


def test_user_overrides_come_after_each_methods_own_and_apply_to_all():
    runs = method_overrides(["training.lr=0.5", "output.dir=/tmp/x"])
    assert list(runs) == ["probe", "lora", "full"]
    for method, extra in runs.items():
        assert extra == [*demo_methods()[method], "training.lr=0.5", "output.dir=/tmp/x", f"output.dir=/tmp/x/{method}"]
        cfg = demo_config(extra)
        assert (cfg.training.method, cfg.training.lr, cfg.output.dir) == (method, 0.5, f"/tmp/x/{method}")


def test_each_method_keeps_its_own_settings_without_user_overrides():
    configs = {method: demo_config(extra) for method, extra in method_overrides([]).items()}
    assert {m: c.training.lr for m, c in configs.items()} == {
        m: demo_config(own).training.lr for m, own in demo_methods().items()}
    assert configs["lora"].output.dir == "lorakit-demo/lora"


def test_training_method_is_refused_with_the_way_to_train_one_method():
    with pytest.raises(ConfigError, match="lorakit demo runs every method"):
        method_overrides(["training.method=full"])
