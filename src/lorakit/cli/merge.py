"""Merge an adapter into its base model and write a plain transformers model directory (safetensors, config,
tokenizer) that `AutoModel*.from_pretrained(OUT)` loads with no lorakit and no adapter latency.

The model class comes from --task; `auto` reads the run's train_config.yaml next to the adapter, else the
adapter's task_type (CAUSAL_LM -> AutoModelForCausalLM, SEQ_CLS -> AutoModelForSequenceClassification,
SEQ_2_SEQ_LM -> AutoModelForSeq2SeqLM), else the base checkpoint's architecture, else AutoModel. A trained
classification head (modules_to_save) is merged too. For a mean-pooling classifier (the demo), OUT holds the
merged encoder (AutoModel) and the head as classifier.safetensors.

A QLoRA run (model.quantization in its train_config.yaml) trained its adapter on the quantized base, so that is
what the merge starts from: the base is loaded quantized as in training, dequantized exactly, the adapter merged
into it, and a report compares the merged model's logits with the adapter model's (lorakit.merge_report).
--full-precision-base merges into the original weights instead (not the model the adapter was trained with).

BASE may be left out: it is then the run's model.path (train_config.yaml next to the adapter, as `lorakit eval`
reads it), else the adapter's base_model_name_or_path when that is a local model directory.

The weights are checked for NaN/Inf before anything is written (--no-safe-merge skips the check). OUT is written
as a temporary folder beside it and renamed into place when complete: a failure (a full disk, Ctrl-C) leaves no
half-written model, and with --overwrite the old OUT stays whole until the new one replaces it.

examples:
  lorakit merge runs/alpaca ./alpaca-merged                    # the base the run was trained on
  lorakit merge ./tiny-llama runs/alpaca ./tiny-llama-merged
  lorakit merge /path/to/base runs/cls merged-cls --task seq-cls --dtype bfloat16

A diffusion adapter (diffusers / kohya file) is fused into its diffusers pipeline instead: see the options below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.cli.merge_pipeline import add_pipeline_arguments
from lorakit.errors import MergeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", nargs="?", default=None,
                        help="the model the adapter was trained on: a local directory, a GGUF file or a Hub id "
                             "(default: the run's)")
    parser.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors), or a "
                        "Hub id org/name[@revision] from the HF cache")
    parser.add_argument("out", help="directory to write the merged model to")
    parser.add_argument("--task", default="auto", choices=["auto", "causal-lm", "seq-cls", "seq2seq", "base"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the written weights (the merge itself runs in float32)")
    parser.add_argument("--safe-merge", action=argparse.BooleanOptionalAction, default=True,
                        help="refuse to write NaN/Inf into the weights (default; --no-safe-merge skips the check)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT even if it is not empty")
    parser.add_argument("--low-memory", action="store_true",
                        help="rewrite the base shard by shard (memory: one tensor plus the adapter); automatic when "
                             "the model would need more than half the available memory (plain LoRA, causal LMs)")
    parser.add_argument("--full-precision-base", action="store_true",
                        help="QLoRA runs: merge into the unquantized base weights instead of the dequantized ones")
    add_pipeline_arguments(parser)  # diffusion adapters: fuse into a pipeline (lorakit/cli/merge_pipeline.py)


def run(args: argparse.Namespace) -> int:
    from lorakit.cli import merge_pipeline

    if merge_pipeline.wants_pipeline(args):
        return merge_pipeline.run(args)
    merge_pipeline.refuse_pipeline_options(args)
    return run_model(args)


def run_model(args: argparse.Namespace) -> int:
    import torch

    import lorakit
    from lorakit.cli.base_model import base_for_adapter, loading_base
    from lorakit.cli.output_dir import check_output, output_directory
    from lorakit.hf.adapter_model import model_config_for_adapter
    from lorakit.hf.hub import local_adapter
    from lorakit.hf.models import load_model
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.hf.tokenizer import load_tokenizer

    quiet_transformers()
    out, adapter = Path(args.out), local_adapter(args.adapter)  # a Hub id (org/name[@revision]): its snapshot
    base_path = base_for_adapter(adapter, args.base, "merge")
    check_output(out, args.overwrite, {"the adapter": adapter, "the base model": base_path})
    model_cfg, labels = model_config_for_adapter(adapter, args.task, base_path)
    if model_cfg is not None and args.full_precision_base:
        model_cfg.quantization = None
    if _merges_by_shard(args, base_path, adapter, model_cfg):
        return run_shards(args, base_path, adapter, model_cfg, out)
    with output_directory(out) as tmp:  # made first, so an unwritable OUT fails before the slow part
        with loading_base(base_path):
            if model_cfg is None:
                from transformers import AutoModel

                from lorakit.hf.models import from_pretrained

                model = from_pretrained(AutoModel, base_path, dtype=torch.float32)
            else:
                model = load_model(model_cfg, base_path, labels)
        tokenizer = load_tokenizer(base_path)
        lorakit.load_adapter(model, adapter)
        merged = merge(model, model_cfg, args.safe_merge, out)
        merged.to(getattr(torch, args.dtype))
        how = save(merged, tmp)
        tokenizer.save_pretrained(tmp)
    print(f"lorakit merge: wrote {out} ({how}, {args.dtype}); load it with transformers' from_pretrained({str(out)!r})")
    return 0


def _merges_by_shard(args: argparse.Namespace, base: Path, adapter: Path, model_cfg) -> bool:
    """--low-memory, or a model that would fill more than half the available memory, when the merge can stream."""
    from lorakit.errors import ConfigError
    from lorakit.io.checkpoint import read_adapter
    from lorakit.merge_shards import loaded_bytes, shard_merge_blocker

    task = "base" if model_cfg is None or model_cfg.pooling == "mean" else model_cfg.task
    blocker = "the run's model config is unknown" if model_cfg is None else \
        shard_merge_blocker(base, read_adapter(adapter).config, task)
    if args.low_memory and blocker:
        raise ConfigError(f"--low-memory: cannot merge shard by shard: {blocker}; leave --low-memory out to merge "
                          "the whole model in memory")
    if blocker:
        return False
    if args.low_memory:
        return True
    available = _available_memory()
    need = loaded_bytes(base, _load_dtype(model_cfg))
    if available is None or need <= available // 2:
        return False
    gib = 1024**3
    print(f"lorakit merge: the model needs {need / gib:.1f} GiB and {available / gib:.1f} GiB are available: "
          "merging shard by shard (--low-memory)")
    return True


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def _load_dtype(model_cfg):
    import torch

    return None if model_cfg.dtype == "auto" else getattr(torch, model_cfg.dtype)


def run_shards(args: argparse.Namespace, base: Path, adapter: Path, model_cfg, out: Path) -> int:
    """The merge written shard by shard (lorakit/merge_shards.py): memory holds one tensor and the adapter."""
    import torch

    from lorakit.cli.output_dir import output_directory
    from lorakit.merge_shards import merge_shards

    quant = None
    if model_cfg.quantization:
        from lorakit.quantize import QuantConfig

        quant = QuantConfig(method=model_cfg.quantization, compute_dtype=model_cfg.compute_dtype,
                            double_quant=model_cfg.double_quant)
        print(f"lorakit merge: the adapter was trained on a {model_cfg.quantization} base; merging into its "
              "exact dequantization (--full-precision-base: the original weights)")
    try:
        with output_directory(out) as tmp:
            layers = merge_shards(base, adapter, tmp, getattr(torch, args.dtype), _load_dtype(model_cfg), quant,
                                  args.safe_merge)
    except MergeError as exc:
        raise MergeError(f"{exc} ({out} was not written)") from None
    print(f"lorakit merge: wrote {out} shard by shard ({layers} layers merged, {args.dtype}); load it with "
          f"transformers' from_pretrained({str(out)!r})")
    return 0


def merge(model, model_cfg, safe: bool, out: Path):
    """The merged, unloaded model; with `safe`, refuses NaN/Inf anywhere in its weights (heads included)."""
    import lorakit

    try:
        if model_cfg is not None and model_cfg.quantization:
            from lorakit.merge_report import merge_with_report

            print(f"lorakit merge: the adapter was trained on a {model_cfg.quantization} base; merging into its "
                  "exact dequantization (--full-precision-base: the original weights)")
            merged, _ = merge_with_report(model, mode="dequantize", safe_merge=safe)
        else:
            merged = lorakit.merge_and_unload(model, safe_merge=safe)
        bad = next((n for n, p in merged.named_parameters() if p.is_floating_point() and not p.isfinite().all()),
                   None) if safe else None
        if bad is not None:
            raise MergeError(f"the merged weight {bad} holds NaN/Inf")
    except MergeError as exc:
        skip = " (--no-safe-merge writes it anyway)" if "NaN" in str(exc) else ""
        raise MergeError(f"{exc}; nothing was written to {out}{skip}") from None
    return merged


def save(merged, directory: Path) -> str:
    """Write the merged model into `directory`; returns how to load it."""
    if hasattr(merged, "encoder") and not hasattr(merged, "save_pretrained"):  # MeanPoolClassifier
        from safetensors.torch import save_file

        merged.encoder.save_pretrained(directory)
        head = {k: v.contiguous() for k, v in merged.classifier.state_dict().items()}
        save_file(head, str(directory / "classifier.safetensors"))
        return "AutoModel (mean-pool its token states; the head is classifier.safetensors)"
    merged.save_pretrained(directory)
    return type(merged).__name__
