"""The base model behind an adapter, for the commands that load one (merge, combine): where it is when the user
does not say, and its loading failures as one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorakit.errors import ConfigError


def base_for_adapter(adapter: Path, given: str | None, command: str) -> Path:
    """BASE when given; else the run's train_config.yaml model.path (and revision, as `lorakit eval` reads them),
    else the adapter's base_model_name_or_path when it is a local model directory or a Hub id in the HF cache."""
    from lorakit.hf.hub import cache_dir
    from lorakit.hf.paths import is_hub_id, is_local_model, resolve_model_path

    if given is not None:
        return resolve_model_path(given)
    run_file = adapter / "train_config.yaml"
    if run_file.is_file():
        import yaml

        model = (yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}).get("model") or {}
        return resolve_model_path(model.get("path"), model.get("revision"))  # null: the default model
    recorded = _recorded_base(adapter)
    if recorded and is_local_model(recorded):  # a model directory or a GGUF file
        return Path(recorded).expanduser()
    where = f"its adapter_config.json names {recorded!r}, not a local model directory" if recorded else (
        "it has no train_config.yaml and its adapter_config.json names no base model")
    if recorded and is_hub_id(recorded):  # as PEFT records it: the base's Hub id
        try:
            return resolve_model_path(recorded)
        except ConfigError:
            where = f"its adapter_config.json names the Hub id {recorded!r}, which is not in the HF cache {cache_dir()}"
    raise ConfigError(f"cannot tell which base model {adapter} was trained on ({where}); pass it: "
                      f"lorakit {command} BASE {adapter} ...")


def recorded_base(adapter: Path) -> str | None:
    """The base an adapter records (its run's model.path, else base_model_name_or_path), local paths resolved."""
    run_file = adapter / "train_config.yaml"
    if run_file.is_file():
        import yaml

        value = ((yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}).get("model") or {}).get("path")
    else:
        value = _recorded_base(adapter)
    if value and Path(value).expanduser().is_dir():
        return str(Path(value).expanduser().resolve())
    return value


def _recorded_base(adapter: Path) -> str | None:
    from lorakit.io.checkpoint import CONFIG_NAME, resolve_directory

    config = resolve_directory(adapter, "default") / CONFIG_NAME
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None  # the adapter loader reports a broken config with its own message
    return value if isinstance(value, str) and value else None


@contextmanager
def loading_base(path: Path) -> Iterator[None]:
    """Turn a broken base checkpoint's errors (raised deep inside transformers) into one ConfigError line."""
    import pickle

    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        raise ConfigError(f"the base model in {path} has a corrupt or truncated .safetensors file ({exc}); "
                          "copy or save the model again") from None
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0])  # the line naming the bad object
        raise ConfigError(f"the base model in {path} has a pickle weights file that a safe load refuses ({reason}); "
                          "if you trust it, convert it to safetensors (save_pretrained(..., safe_serialization="
                          "True)) and retry") from None
