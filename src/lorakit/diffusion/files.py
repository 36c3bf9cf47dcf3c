"""The one reader and writer of pipeline adapters: a LoRA spread over a diffusers pipeline's components (the
denoiser and the text encoders), in three file layouts:

    diffusers   <dir>/pytorch_lora_weights.safetensors, keys "<component>.<path>.lora_A.weight"
                (io/formats/diffusers_lora.py)
    kohya       one .safetensors, keys "lora_unet_<path with _>.lora_down.weight" + ".alpha" (io/formats/kohya.py)
    peft        <dir>/<component>/adapter_config.json + adapter_model.safetensors (lorakit's own PEFT files)

Every layout reads into, and is written from, one PipelineAdapter: per component a LoraConfig and the tensors keyed
as PEFT's state dict without a prefix ("<module path>.lora_A.weight"). The layouts differ only in the key mapping,
so converting is read + write. Writes are atomic (io/atomic.py); a load either fills every component or none.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from lorakit.adapter_state import adapter_configs, get_config
from lorakit.adapters import add_adapter
from lorakit.config import LoraConfig
from lorakit.errors import AdapterError, AdapterFileError, ConfigError, LorakitError, TargetError
from lorakit.hf.pipelines import lora_components
from lorakit.inject import base_of, iter_candidates
from lorakit.io.atomic import atomic_directory, replace_files
from lorakit.io.checkpoint import CONFIG_NAME, adapter_state_dict, copy_into_model, read_adapter, write_files
from lorakit.io.formats import diffusers_lora, kohya, kohya_ldm
from lorakit.io.formats.patterns import config_from_modules, module_values
from lorakit.io.keys import PREFIX, layer_path_of, strip_prefix
from lorakit.rollback import restore_on_error
from lorakit.variants.registry import with_hook
from lorakit.version import __version__

FORMATS = ("diffusers", "kohya", "peft")
KOHYA_DEFAULT_NAME = "lora.safetensors"  # the file a kohya adapter gets inside a folder


class ComponentAdapter(NamedTuple):
    config: LoraConfig
    tensors: dict[str, torch.Tensor]  # "<module path>.lora_A.weight" / ".lora_B.weight", no prefix


class PipelineAdapter(NamedTuple):
    components: dict[str, ComponentAdapter]  # pipeline attribute name ("unet", "text_encoder", ...) -> its part
    format: str  # the layout it was read from or made for: "diffusers" | "kohya" | "peft"
    metadata: dict[str, str]  # the file's metadata (kohya's ss_*, lorakit's records)
    source: Path


# -- reading ---------------------------------------------------------------------------------------------------------
def read_pipeline_adapter(path: str | os.PathLike, base: Any = None) -> PipelineAdapter:
    """Read a pipeline adapter from a file or a folder; the layout is told by the keys.

    `base`: the pipeline the adapter is for. Only kohya names need it (their '_' hides where the module path has
    dots); without it they are read against diffusers' SD naming, and a name outside it is an error."""
    path = Path(path).expanduser()
    if path.is_dir() and _peft_components(path):
        return _read_peft(path)
    file = _weights_file(path)
    tensors, metadata = _read_safetensors(file)
    for _layout, is_key, reader in READERS:
        if tensors and all(is_key(k) for k in tensors):
            return reader(tensors, metadata, file, base)
    first = sorted(tensors)[:3]
    raise AdapterFileError(f"{file} is not a LoRA layout lorakit reads (diffusers, kohya, PEFT); its first keys: "
                           f"{first}")


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise AdapterFileError(f"{path} does not exist")
    preferred = path / diffusers_lora.WEIGHTS_NAME
    if preferred.is_file():
        return preferred
    found = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    listing = sorted(p.name for p in path.iterdir())[:20]
    raise AdapterFileError(f"{path}: expected {diffusers_lora.WEIGHTS_NAME}, one kohya .safetensors file or PEFT "
                           f"component folders (unet/{CONFIG_NAME}); found {listing}")


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  (not a dict)
    except Exception as exc:  # safetensors raises its own error types for truncated / foreign files
        raise AdapterFileError(f"{file} is not a readable safetensors file ({exc})") from None
    _check_finite(tensors, file)
    return tensors, metadata


def _check_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(f"{source}: tensor {key} holds NaN or Inf values; the file is damaged, "
                                   "export the adapter again")


def _from_diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: Path,
                    base: Any) -> PipelineAdapter:
    configs = diffusers_lora.decode_metadata(metadata, str(source))
    parts: dict[str, ComponentAdapter] = {}
    for name, (found, alphas) in diffusers_lora.split_components(tensors).items():
        ranks = {layer_path_of(k): t.shape[0] for k, t in found.items() if k.endswith("lora_A.weight")}
        if name in configs:
            try:
                config, _ = LoraConfig.from_peft_dict(configs[name])
            except LorakitError as exc:
                raise AdapterFileError(f"{source}: the LoRA config of {name}: {exc}") from None
        else:  # diffusers' rule for files without a config: r from the shapes, alpha = r unless a .alpha says
            config = config_from_modules(ranks, alphas)
        parts[name] = ComponentAdapter(_with_targets(config, found), found)
    return PipelineAdapter(parts, "diffusers", metadata, source)


def _from_kohya(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: Path,
                base: Any) -> PipelineAdapter:
    components = lora_components(base) if base is not None else {}
    parts: dict[str, ComponentAdapter] = {}
    for prefix, modules in kohya.split_file(tensors, str(source)).items():
        name = kohya.COMPONENT_OF[prefix]
        resolve = _kohya_resolver(name, components, base is not None, source)
        found: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        for kohya_name, roles in sorted(modules.items()):
            path = resolve(f"{prefix}_{kohya_name}", kohya_name)
            found[f"{path}.lora_A.weight"] = roles["lora_A.weight"]
            found[f"{path}.lora_B.weight"] = roles["lora_B.weight"]
            ranks[path] = roles["lora_A.weight"].shape[0]
            if "alpha" in roles:
                alphas[path] = float(roles["alpha"].item())
        parts[name] = ComponentAdapter(config_from_modules(ranks, alphas), found)
    return PipelineAdapter(parts, "kohya", metadata, source)


def _kohya_resolver(component: str, components: dict[str, nn.Module], have_base: bool,
                    source: Path) -> Callable[[str, str], str]:
    """A function kohya name -> module path: against the pipeline's modules, or diffusers' SD naming."""
    if not have_base:
        def guess(full: str, name: str) -> str:
            if component == "unet" and name.startswith(kohya.LDM_BLOCKS):
                raise AdapterFileError(f"{source}: module {full} uses the original LDM UNet names (input_blocks / "
                                       "output_blocks, sd-scripts' SDXL files); pass the pipeline (--base PIPELINE) "
                                       "to map them onto its UNet")
            path = kohya.guess_path(name)
            if path is None:
                raise AdapterFileError(f"{source}: module {full} is not a diffusers SD name lorakit can read without "
                                       "the pipeline; pass the pipeline (--base PIPELINE)")
            return path
        return guess
    if component not in components:
        raise AdapterFileError(f"{source} has LoRA for {component}, which this pipeline does not have "
                               f"(it has {sorted(components)})")
    names = kohya.name_map([p for p, _ in iter_candidates(components[component])], component.startswith("text_"))
    ldm = kohya_ldm.block_table(components[component]) if component == "unet" else {}

    def lookup(full: str, name: str) -> str:
        split = kohya_ldm.split_ldm_name(name, ldm) if name.startswith(kohya.LDM_BLOCKS) else None
        if split is not None:  # an LDM name: its block's diffusers path, then the rest as usual
            block, rest = split
            name = "_".join(filter(None, [block.replace(".", "_"), rest]))
        if name not in names:
            raise AdapterFileError(f"{source}: module {full} matches no module of the pipeline's {component}; was "
                                   "the file made for another model?")
        if names[name] is None:
            raise AdapterFileError(f"{source}: module {full} fits several modules of {component} (ambiguous)")
        return str(names[name])
    return lookup


def _peft_components(directory: Path) -> list[str]:
    return [name for name in diffusers_lora.COMPONENTS if (directory / name / CONFIG_NAME).is_file()]


def _read_peft(directory: Path) -> PipelineAdapter:
    parts: dict[str, ComponentAdapter] = {}
    for name in _peft_components(directory):
        config, _, tensors, _ = read_adapter(directory / name)
        found = {strip_prefix(k): t for k, t in tensors.items()}
        _check_finite(found, directory / name)
        parts[name] = ComponentAdapter(_with_targets(config, found), found)
    return PipelineAdapter(parts, "peft", {}, directory)


def _with_targets(config: LoraConfig, tensors: dict[str, torch.Tensor]) -> LoraConfig:
    """The config aimed at exactly the modules the tensors cover (so a load adapts those and no other)."""
    return dataclasses.replace(config, target_modules=sorted({layer_path_of(k) for k in tensors}))


READERS = (  # (layout, does a key belong to it, reader); a file is read by the layout all its keys belong to
    ("kohya", kohya.is_kohya_key, _from_kohya),
    ("diffusers", diffusers_lora.is_diffusers_key, _from_diffusers),
)


# -- loading into a pipeline ------------------------------------------------------------------------------------------
def load_pipeline_adapter(pipe: Any, path_or_adapter: str | os.PathLike | PipelineAdapter,
                          adapter_name: str = "default", autocast_adapter_dtype: bool = False) -> list[str]:
    """Inject the adapter into each component it covers and fill its weights; returns those components.

    The adapter takes each component's device and dtype (for inference, as diffusers loads LoRA;
    `autocast_adapter_dtype=True` keeps it in fp32 over a 16-bit pipeline, for training).
    Every tensor must fit a module of the pipeline; on any error no component keeps the adapter."""
    adapter = path_or_adapter if isinstance(path_or_adapter, PipelineAdapter) else \
        read_pipeline_adapter(path_or_adapter, base=pipe)
    components = lora_components(pipe)
    plan = []
    for name, part in adapter.components.items():
        source = f"{adapter.source} ({name})"
        if name not in components:
            raise AdapterFileError(f"{adapter.source} has LoRA for {name}, which this pipeline does not have "
                                   f"(it has {sorted(components)})")
        module = components[name]
        if adapter_name in adapter_configs(module):
            raise AdapterFileError(f"the pipeline's {name} already has an adapter named {adapter_name!r}; load it "
                                   "under another name")
        tensors = _fit_to_module(module, part.tensors, source)
        config = dataclasses.replace(_with_targets(part.config, tensors), inference_mode=True)
        plan.append((name, module, config, tensors, source))
    with ExitStack() as undo:  # a failure in any component rolls back every component done so far
        for _name, module, config, tensors, source in plan:
            undo.enter_context(restore_on_error(module, adapter_name, config))
            try:
                add_adapter(module, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
            except (ConfigError, TargetError) as exc:
                raise AdapterFileError(f"{source}: {exc}") from None
            copy_into_model(module, {PREFIX + k: t for k, t in tensors.items()}, adapter_name, source)
    return [name for name, *_ in plan]


def _fit_to_module(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keys moved onto the module's real paths (CLIP's "text_model." level comes and goes between transformers
    versions) and 1x1-conv factors of a Linear module flattened (kohya writes SD's proj_in / proj_out as convs)."""
    modules = dict(iter_candidates(module))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        path = layer_path_of(key)
        role = key[len(path) + 1:]
        if path not in modules and path.startswith(kohya.TEXT_MODEL) and path[len(kohya.TEXT_MODEL):] in modules:
            path = path[len(kohya.TEXT_MODEL):]
        if path not in modules:
            raise AdapterFileError(f"{source}: tensor {key} matches no module of the pipeline (no {path!r}); was "
                                   "the adapter made for another model?")
        if isinstance(base_of(modules[path]), nn.Linear) and tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor.reshape(tensor.shape[:2])
        out[f"{path}.{role}"] = tensor
    return out


# -- saving -----------------------------------------------------------------------------------------------------------
def adapter_from_pipeline(pipe: Any, adapter_name: str = "default") -> PipelineAdapter:
    """The adapter `adapter_name` of every component that has it, as one PipelineAdapter."""
    parts: dict[str, ComponentAdapter] = {}
    for name, module in lora_components(pipe).items():
        if adapter_name not in adapter_configs(module):
            continue
        config = get_config(module, adapter_name)
        if with_hook(config, "save") is not None:  # e.g. PiSSA: its file form is a fold only save_adapter writes
            raise AdapterError(f"adapter {adapter_name!r} of {name} (init_lora_weights={config.init_lora_weights!r}) "
                               "has its own file form; save it with lorakit.save_adapter per component")
        tensors = {strip_prefix(k): t for k, t in adapter_state_dict(module, adapter_name).items()}
        config = dataclasses.replace(config, init_lora_weights=True)  # the file's weights replace any init
        parts[name] = ComponentAdapter(_with_targets(config, tensors), tensors)
    if not parts:
        names = sorted({n for m in lora_components(pipe).values() for n in adapter_configs(m)})
        raise AdapterError(f"no component of this pipeline has an adapter named {adapter_name!r}; adapters: {names}")
    unet = getattr(pipe, "unet", None)
    metadata = {"lorakit_version": __version__, "lorakit_pipeline": type(pipe).__name__,
                "lorakit_cross_attention_dim": str(getattr(getattr(unet, "config", None), "cross_attention_dim", ""))}
    return PipelineAdapter(parts, "diffusers", metadata, Path("."))


def save_pipeline_adapter(pipe: Any, directory: str | os.PathLike, adapter_name: str = "default",
                          format: str = "diffusers") -> Path:
    """Write the pipeline's adapter `adapter_name` in `format`; returns the file (or folder, for peft) written."""
    return write_pipeline_adapter(adapter_from_pipeline(pipe, adapter_name), directory, format)


def write_pipeline_adapter(adapter: PipelineAdapter, directory: str | os.PathLike, format: str) -> Path:
    """Write `adapter` in `format` into `directory` (a path ending in .safetensors: that file, for the one-file
    layouts), atomically."""
    if format not in WRITERS:
        raise ConfigError(f"format={format!r}: expected one of {list(WRITERS)}")
    return WRITERS[format](adapter, Path(directory).expanduser())


def _file_target(target: Path, default_name: str) -> Path:
    file = target if target.suffix == ".safetensors" else target / default_name
    if file.parent.exists() and not file.parent.is_dir():
        raise AdapterFileError(f"cannot write into {file.parent}: it is a file")
    file.parent.mkdir(parents=True, exist_ok=True)
    return file


def _write_one_file(file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    data = safetensors_save({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, metadata=metadata)
    replace_files(file.parent, {file.name: data})
    return file


def _records(adapter: PipelineAdapter) -> dict[str, str]:
    return {k: v for k, v in adapter.metadata.items() if k.startswith("lorakit_")} | {"lorakit_version": __version__}


def _write_diffusers(adapter: PipelineAdapter, target: Path) -> Path:
    tensors = diffusers_lora.join_components({n: p.tensors for n, p in adapter.components.items()})
    configs = {n: p.config.to_dict() for n, p in adapter.components.items()}
    metadata = {**_records(adapter), **diffusers_lora.encode_metadata(configs)}
    return _write_one_file(_file_target(target, diffusers_lora.WEIGHTS_NAME), tensors, metadata)


def _write_kohya(adapter: PipelineAdapter, target: Path) -> Path:
    sdxl = "text_encoder_2" in adapter.components or "XL" in adapter.metadata.get("lorakit_pipeline", "") or \
        adapter.metadata.get("ss_base_model_version", "").startswith("sdxl")
    prefixes = kohya.prefixes(list(adapter.components), sdxl)
    tensors: dict[str, torch.Tensor] = {}
    all_ranks: dict[str, int] = {}
    all_alphas: dict[str, float] = {}
    conv_ranks: dict[str, int] = {}
    for name, part in adapter.components.items():
        paths = sorted({layer_path_of(k) for k in part.tensors})
        ranks, alphas = module_values(part.config, paths)
        tensors.update(kohya.to_kohya(name, prefixes[name], part.tensors, alphas))
        all_ranks |= {f"{name}.{p}": r for p, r in ranks.items()}
        all_alphas |= {f"{name}.{p}": a for p, a in alphas.items()}
        conv_ranks |= {f"{name}.{p}": ranks[p] for p in paths if part.tensors[f"{p}.lora_A.weight"].dim() == 4
                       and tuple(part.tensors[f"{p}.lora_A.weight"].shape[2:]) != (1, 1)}
    file = _file_target(target, KOHYA_DEFAULT_NAME)
    version = adapter.metadata.get("ss_base_model_version") or kohya.base_model_version(
        "XL" if sdxl else adapter.metadata.get("lorakit_pipeline", ""),
        _int_or_none(adapter.metadata.get("lorakit_cross_attention_dim")))
    kept = {k: v for k, v in adapter.metadata.items() if k.startswith("ss_")}
    metadata = {**kept, **kohya.ss_metadata(all_ranks, all_alphas, conv_ranks, version, file.stem, {}),
                **_records(adapter)}
    return _write_one_file(file, tensors, metadata)


def _write_peft(adapter: PipelineAdapter, target: Path) -> Path:
    if target.exists() and not target.is_dir():
        raise AdapterFileError(f"cannot write PEFT folders into {target}: it is a file")
    for name, part in adapter.components.items():
        with atomic_directory(target / name) as tmp:
            write_files(tmp, part.config.to_dict(), {PREFIX + k: t for k, t in part.tensors.items()},
                        {"lorakit_version": __version__})
    for stale in set(_peft_components(target)) - set(adapter.components):  # a component the adapter no longer has
        shutil.rmtree(target / stale)
    return target


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


WRITERS: dict[str, Callable[[PipelineAdapter, Path], Path]] = {
    "diffusers": _write_diffusers, "kohya": _write_kohya, "peft": _write_peft,
}
