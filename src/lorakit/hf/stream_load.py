"""QLoRA's base loaded shard by shard: each linear weight is quantized as soon as it is read, so the full-precision
model never exists in memory (a 7B model: about 3.9 GB quantized instead of 13.5 GB in bf16, then quantized).

    model, why = load_quantized(AutoModelForCausalLM, Path("llama-7b"), QuantConfig("nf4"), torch.bfloat16)

The model is built on the meta device from its config (no memory, no random init), the layers to quantize are
planned from its shapes with the same rules as lorakit.quantize (the head, tied weights and layers bitsandbytes'
CPU kernel gets wrong stay full precision), then the checkpoint's tensors are read one at a time with plain file
reads (io/safetensors_stream.py) and either quantized into their layer or put in place. The result equals
loading the whole model and calling quantize_model (tests/hf/test_stream_load.py compares weights and logits).

Where that cannot be done exactly the loader says why and returns None, and the caller loads the whole model as
before: a checkpoint that is not safetensors, a parameter the checkpoint lacks (a new task head to initialise),
or a non-persistent buffer (e.g. rotary frequencies) the model's own initialiser does not recompute.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from pathlib import Path

import torch
import transformers
from torch import nn

from lorakit.inject import set_submodule
from lorakit.io.safetensors_stream import SafetensorsReader, checkpoint_files
from lorakit.quantize import QuantConfig, finish_quantization, import_bitsandbytes, plan_quantization, quantize_linear

CONFIG_KWARGS = ("num_labels", "id2label", "label2id")  # set on the config, as from_pretrained does


def load_quantized(auto_class, path: Path, quant: QuantConfig, dtype: torch.dtype | str,
                   device: torch.device | None = None, **kwargs) -> tuple[nn.Module | None, str]:
    """(the quantized model, "") or (None, why it must be loaded whole). kwargs: from_pretrained's."""
    files = checkpoint_files(path)
    if files is None:
        return None, "the checkpoint is not in safetensors format"
    import_bitsandbytes()
    model = _skeleton(auto_class, path, dtype, kwargs)
    targets = _checkpoint_targets(model, files)
    names = {n for n, _ in model.named_parameters()}  # tied weights once
    aliases = _aliases(model)
    missing = sorted(n for n in names if not aliases[n] & set(targets.values()))
    if missing:
        return None, f"the checkpoint has no {missing[0]!r} (a new head to initialise)"
    planned, kept = plan_quantization(model, quant)
    planned_set = set(planned)
    device = device or torch.device("cpu")
    for file in files:
        with SafetensorsReader(file) as reader:
            for key, tensor in reader:
                target = targets.get(key)
                if target is None:
                    continue  # e.g. a tied head stored twice, or a buffer this model computes itself
                module_path, _, attr = target.rpartition(".")
                if module_path in planned_set and attr == "weight":
                    _quantize_into(model, module_path, tensor, quant, device)
                    del tensor
                    release_freed_memory()  # quantizing a weight frees ~4x its size in temporaries
                else:
                    _put(model.get_submodule(module_path), attr, tensor, device)
                    del tensor
    model.tie_weights()
    why = _materialize_buffers(model, device)
    if why:
        return None, why
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        return None, f"{meta!r} was not filled from the checkpoint"
    _finish(model, path)
    return finish_quantization(model, quant, planned, kept), ""


def _skeleton(auto_class, path: Path, dtype: torch.dtype | str, kwargs: dict) -> nn.Module:
    kwargs = dict(kwargs)
    trust = kwargs.pop("trust_remote_code", False)
    config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=trust)
    for key in CONFIG_KWARGS:
        if key in kwargs:
            setattr(config, key, kwargs.pop(key))
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    with torch.device("meta"):
        model = auto_class.from_config(config, dtype=dtype, trust_remote_code=trust, **kwargs)
    return model


def _checkpoint_targets(model: nn.Module, files: list[Path]) -> dict[str, str]:
    """checkpoint key -> the model's parameter / buffer name; keys that name nothing in the model are left out.
    A checkpoint of the full model loaded into its base class (or the reverse) differs by base_model_prefix."""
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    names |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    prefix = getattr(model, "base_model_prefix", "") or ""
    targets: dict[str, str] = {}
    for file in files:
        with SafetensorsReader(file) as reader:
            keys = list(reader.entries)
        for key in keys:
            for candidate in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")):
                if candidate in names:
                    targets[key] = candidate
                    break
    return targets


def _aliases(model: nn.Module) -> dict[str, set[str]]:
    """parameter name (first one) -> every name it goes by (a tied head shares the embedding's weight)."""
    by_id: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), set()).add(name)
    return {name: by_id[id(param)] for name, param in model.named_parameters()}


def _quantize_into(model: nn.Module, module_path: str, weight: torch.Tensor, quant: QuantConfig,
                   device: torch.device) -> None:
    old = model.get_submodule(module_path)
    shell = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
    # the model's dtype first, as a whole-model load would hold it before quantize_model packs it
    shell.weight = nn.Parameter(weight.to(device=device, dtype=old.weight.dtype), requires_grad=False)
    if old.bias is not None:
        shell.bias = old.bias  # still meta when the bias comes later in the file; _put fills it then
    shell.train(old.training)
    set_submodule(model, module_path, quantize_linear(shell, quant))


def _put(module: nn.Module, attr: str, tensor: torch.Tensor, device: torch.device) -> None:
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(tensor.to(device=device, dtype=old.dtype),
                                                requires_grad=old.requires_grad)
    else:
        module._buffers[attr] = tensor.to(device=device, dtype=module._buffers[attr].dtype)


@torch.no_grad()
def _materialize_buffers(model: nn.Module, device: torch.device) -> str:
    """Buffers no checkpoint holds (rotary frequencies) are computed by the model's own initialiser, as
    transformers does for them; one it leaves unset (still NaN here) means the model must be loaded whole."""
    init = getattr(model, "_init_weights", None)
    for path, module in model.named_modules():
        pending = [n for n, b in module._buffers.items() if b is not None and b.is_meta]
        if not pending:
            continue
        if init is None:
            return f"buffer {path}.{pending[0]} is not in the checkpoint"
        for name in pending:
            buffer = module._buffers[name]
            module._buffers[name] = torch.full(buffer.shape, math.nan, dtype=buffer.dtype, device=device) \
                if buffer.is_floating_point() else torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
        init(module)
        unset = [n for n in pending if module._buffers[n].is_floating_point() and module._buffers[n].isnan().any()]
        if unset:
            return f"the model's initialiser does not compute buffer {path}.{unset[0]}"
    return ""


def _finish(model: nn.Module, path: Path) -> None:
    """What from_pretrained also does: eval mode, the name it was loaded from, its generation settings."""
    model.eval()
    model.config._name_or_path = str(path)
    if (path / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        model.generation_config = transformers.GenerationConfig.from_pretrained(str(path))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS: glibc keeps the freed temporaries of one quantized weight resident
    and reuses them badly for the next (a 1B model peaked at 2.5 GiB instead of 1.2 GiB without this)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
