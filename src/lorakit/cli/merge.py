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

examples:
  lorakit merge ./tiny-llama runs/alpaca ./tiny-llama-merged
  lorakit merge /path/to/base runs/cls merged-cls --task seq-cls --dtype bfloat16
  lorakit merge /path/to/base runs/x merged --safe-merge       # refuse to write NaN/Inf into the weights
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="local Hugging Face model directory the adapter was trained on")
    parser.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("out", help="directory to write the merged model to")
    parser.add_argument("--task", default="auto", choices=["auto", "causal-lm", "seq-cls", "seq2seq", "base"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the written weights (the merge itself runs in float32)")
    parser.add_argument("--safe-merge", action="store_true", help="check for NaN/Inf before writing the weights")
    parser.add_argument("--overwrite", action="store_true", help="write into OUT even if it is not empty")
    parser.add_argument("--full-precision-base", action="store_true",
                        help="QLoRA runs: merge into the unquantized base weights instead of the dequantized ones")


def run(args: argparse.Namespace) -> int:
    import torch

    import lorakit
    from lorakit.train.loading import (
        load_model,
        load_tokenizer,
        model_config_for_adapter,
        quiet_transformers,
        resolve_model_path,
    )

    quiet_transformers()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another directory or pass --overwrite")
    base_path = resolve_model_path(args.base)
    model_cfg, labels = model_config_for_adapter(Path(args.adapter), args.task, base_path)
    if model_cfg is not None and args.full_precision_base:
        model_cfg.quantization = None
    if model_cfg is None:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(base_path), dtype=torch.float32)
    else:
        model = load_model(model_cfg, base_path, labels)
    lorakit.load_adapter(model, args.adapter)
    if model_cfg is not None and model_cfg.quantization:
        from lorakit.merge_report import merge_with_report

        print(f"lorakit merge: the adapter was trained on a {model_cfg.quantization} base; merging into its exact "
              "dequantization (--full-precision-base: the original weights)")
        merged, _ = merge_with_report(model, mode="dequantize", safe_merge=args.safe_merge)
    else:
        merged = lorakit.merge_and_unload(model, safe_merge=args.safe_merge)
    merged.to(getattr(torch, args.dtype))
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(merged, "encoder") and not hasattr(merged, "save_pretrained"):  # MeanPoolClassifier
        from safetensors.torch import save_file

        merged.encoder.save_pretrained(out)
        head = {k: v.contiguous() for k, v in merged.classifier.state_dict().items()}
        save_file(head, str(out / "classifier.safetensors"))
        how = "AutoModel (mean-pool its token states; the head is classifier.safetensors)"
    else:
        merged.save_pretrained(out)
        how = type(merged).__name__
    load_tokenizer(base_path).save_pretrained(out)
    print(f"lorakit merge: wrote {out} ({how}, {args.dtype}); load it with transformers' from_pretrained({str(out)!r})")
    return 0
