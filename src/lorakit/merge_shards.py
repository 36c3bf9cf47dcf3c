"""`lorakit merge` for a model larger than memory: the base checkpoint is rewritten shard by shard, tensor by
tensor, each adapted weight replaced by W + s·B·A, so memory holds one tensor and the adapter, not the model.

It computes what the whole-model merge computes (cli/merge.py; tests/test_merge_shards.py compares the files):
each weight in the dtype the model would be loaded in, plus the adapter's scaled_product in float32, rounded
back to that dtype, then written in the output dtype. For a QLoRA adapter the base of every layer the training
quantized is that layer's exact dequantization (the weight quantized with the run's settings, as the streaming
loader packs it, then unpacked in float32), as in the whole-model merge.

Only what it can do exactly: plain LoRA (no DoRA or other variant, no trained bias or saved modules, no
transposed Conv1D weights) on a safetensors checkpoint of a causal LM. `shard_merge_blocker` names what stands in
the way; the caller then merges the whole model in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import MergeError
from lorakit.io.checkpoint import read_adapter
from lorakit.io.keys import strip_prefix
from lorakit.io.safetensors_stream import SafetensorsReader, SafetensorsWriter, checkpoint_files
from lorakit.layers.lowrank import scaled_product

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
LORA_PARTS = ("lora_A.weight", "lora_B.weight")


def shard_merge_blocker(base: Path, adapter_config: LoraConfig, task: str) -> str | None:
    """Why this merge cannot stream shard by shard (None: it can)."""
    if checkpoint_files(base) is None:
        return "the base is not a folder of safetensors shards"
    if task not in ("causal-lm", "base"):
        return f"the {task} model class differs from the checkpoint's"
    if adapter_config.peft_type != "LORA" or adapter_config.use_dora:
        return f"the adapter is {'DoRA' if adapter_config.use_dora else adapter_config.peft_type}, not plain LoRA"
    if adapter_config.lora_bias or adapter_config.fan_in_fan_out or adapter_config.modules_to_save:
        return "the adapter trains a bias, transposed (Conv1D) weights or whole modules"
    return None


def loaded_bytes(base: Path, load_dtype: torch.dtype | None) -> int:
    """Bytes of the checkpoint's weights held in memory in `load_dtype` (None: as stored)."""
    total = 0
    for file in checkpoint_files(base) or []:
        with SafetensorsReader(file) as reader:
            for entry in reader.entries.values():
                size = entry.nbytes
                if load_dtype is not None and entry.dtype.is_floating_point:
                    size = size // _itemsize(entry.dtype) * _itemsize(load_dtype)
                total += size
    return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def merge_shards(base: Path, adapter_dir: Path, out: Path, dtype: torch.dtype, load_dtype: torch.dtype | None,
                 quant=None, safe: bool = True) -> int:
    """Write the merged checkpoint into the (empty, temporary) folder `out`; returns the number of merged layers.

    load_dtype: the dtype the run loaded its base in (None: the checkpoint's); quant: the run's QuantConfig
    (QLoRA) or None."""
    files = checkpoint_files(base)
    adapter = read_adapter(adapter_dir)
    blocker = shard_merge_blocker(base, adapter.config, "causal-lm")
    if files is None or blocker:
        raise MergeError(f"cannot merge shard by shard: {blocker}")
    deltas = _adapter_layers(adapter.tensors)
    planned = _quantized_paths(base, quant) if quant is not None else set()
    names = _checkpoint_names(files)
    keys = {path: _base_key(path, names) for path in deltas}
    unmatched = [p for p, k in keys.items() if k is None]
    if unmatched:
        raise MergeError(f"the adapter's layer {unmatched[0]} has no weight in {base} (the adapter was trained on "
                         "another model); nothing was written")
    by_key = {key: path for path, key in keys.items()}
    merged = total = 0
    for file in files:
        with SafetensorsReader(file) as reader, open(out / file.name, "wb") as handle:
            layout = {name: (dtype if entry.dtype.is_floating_point else entry.dtype, entry.shape)
                      for name, entry in sorted(reader.entries.items(), key=lambda kv: kv[1].begin)}
            writer = SafetensorsWriter(handle, layout, reader.metadata or {"format": "pt"})
            for name, tensor in reader:
                if tensor.is_floating_point():
                    tensor = tensor.to(load_dtype or tensor.dtype)
                path = by_key.get(name)
                if path is not None:
                    tensor = _merged(name, tensor, deltas[path], adapter.config.scaling_for(path), quant,
                                     name.removesuffix(".weight") in planned, safe)
                    merged += 1
                tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
                writer.write(name, tensor)
                total += tensor.numel() * tensor.element_size()
                del tensor
            writer.close()
    _copy_side_files(base, out, dtype, total)
    return merged


def _adapter_layers(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (A, B) of the adapter's plain-LoRA layers."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        short = strip_prefix(key)
        role = next((r for r in LORA_PARTS if short.endswith("." + r)), None)
        if role is None:
            raise MergeError(f"the adapter holds {key}, which is not a LoRA A/B matrix; it cannot merge shard by "
                             "shard")
        parts.setdefault(short[: -len(role) - 1], {})[role] = tensor
    out = {}
    for path, pair in parts.items():
        if len(pair) != 2:
            raise MergeError(f"the adapter's layer {path} lacks its {'B' if LORA_PARTS[0] in pair else 'A'} matrix")
        out[path] = (pair["lora_A.weight"], pair["lora_B.weight"])
    return out


def _checkpoint_names(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for file in files:
        with SafetensorsReader(file) as reader:
            names |= set(reader.entries)
    return names


def _base_key(path: str, names: set[str]) -> str | None:
    for candidate in (f"{path}.weight", f"model.{path}.weight", f"{path.removeprefix('model.')}.weight"):
        if candidate in names:
            return candidate
    return None


def _merged(name: str, weight: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor], scaling: float, quant,
            packed: bool, safe: bool) -> torch.Tensor:
    a, b = pair
    if weight.shape != (b.shape[0], a.shape[1]):
        raise MergeError(f"{name} is {tuple(weight.shape)} but the adapter's B·A is {(b.shape[0], a.shape[1])}; the "
                         "adapter was trained on another model; nothing was written")
    base = _dequantized(weight, quant) if packed else weight.float()
    out = base + scaled_product(a, b, scaling).float()
    if safe and not torch.isfinite(out).all():
        raise MergeError(f"merging into {name} would write NaN/Inf (--no-safe-merge writes it anyway); nothing was "
                         "written")
    # a QLoRA merge runs in float32 throughout (merge_report.merge_with_report), a plain one rounds to the base's dtype
    return out if quant is not None else out.to(weight.dtype)


def _dequantized(weight: torch.Tensor, quant) -> torch.Tensor:
    from lorakit.bnb import dequantize_weight
    from lorakit.quantize import quantize_linear

    shell = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    shell.weight = nn.Parameter(weight, requires_grad=False)
    return dequantize_weight(quantize_linear(shell, quant))


def _quantized_paths(base: Path, quant) -> set[str]:
    """The layers the QLoRA run quantized: the streaming loader's plan on the model's skeleton (no weights)."""
    import transformers

    from lorakit.hf.stream_load import _skeleton
    from lorakit.quantize import plan_quantization

    model = _skeleton(transformers.AutoModelForCausalLM, base, "auto", {})
    return set(plan_quantization(model, quant)[0])


def _copy_side_files(base: Path, out: Path, dtype: torch.dtype, total_size: int) -> None:
    """config.json (with the written dtype), the index, tokenizer and generation files: all but the weights."""
    for item in base.iterdir():
        if item.name.startswith(".") or item.is_dir() or item.name.endswith(WEIGHT_FILES):
            continue
        if item.name == "config.json":
            config = json.loads(item.read_text())
            config["dtype"] = str(dtype).removeprefix("torch.")
            config.pop("torch_dtype", None)
            (out / item.name).write_text(json.dumps(config, indent=2) + "\n")
        elif item.name == "model.safetensors.index.json":
            index = json.loads(item.read_text())
            index.setdefault("metadata", {})["total_size"] = total_size  # tensor bytes, as transformers counts
            (out / item.name).write_text(json.dumps(index, indent=2) + "\n")
        else:
            shutil.copy2(item, out / item.name)
