"""One contender of the SFT race (sft_race.py), run alone in its own process so that its peak RSS is its own:

    python -m benchmarks.scale.sft_worker VARIANT WORK RESULT.json

VARIANT is a key of VARIANTS. WORK is the folder sft_race.prepare wrote (model/, init/, train.jsonl, trl_*.jsonl,
plan.json). Each run trains plan["steps"] optimizer steps and writes RESULT.json: the wall time at the end of every
step (seconds since the training call started), the real tokens of every step, its loss, and the peak RSS.
Only the framework the variant races is imported (lorakit never imports TRL or PEFT here, and TRL's runs import no
lorakit training code), so each process's memory is that framework's.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = {  # name -> (framework, its settings)
    # packed: blocks twice max_seq_len, half as many per step (the same 8 x 128 tokens of room): the chat rows are
    # 70-126 tokens, so 128-token blocks would hold one each and packing would remove no padding
    "lorakit": ("lorakit", {"packing": True, "widen": 2}),
    "lorakit-unpacked": ("lorakit", {"packing": False, "widen": 1}),
    "trl-default": ("trl", {"lean": False, "packing": False}),  # as users run it: entropy and accuracy each step
    "trl-lean": ("trl", {"lean": True, "packing": False}),  # its per-step metrics off, padded batches
    "trl-packed": ("trl", {"lean": True, "packing": True}),  # metrics off, bfd packing (padding-free: one row)
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- lorakit ---------------------------------------------------------------------------------------------------------
def lorakit_config(work: Path, plan: dict, packing: bool, widen: int) -> dict:
    return {
        "model": {"path": str(work / "model"), "task": "causal-lm", "dtype": "float32"},
        "lora": {"r": plan["r"], "lora_alpha": plan["alpha"], "lora_dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train_file": str(work / "train.jsonl"), "format": "chat", "max_seq_len": plan["seq"] * widen,
                 "packing": packing, "cache_tokenized": False},
        "training": {"max_steps": plan["steps"], "batch_size": plan["batch"] // widen, "lr": plan["lr"],
                     "scheduler": "constant", "max_grad_norm": 1.0, "seed": plan["seed"], "progress": False,
                     "mixed_precision": "no", "device": "cpu"},
        "output": {"dir": str(work / "runs" / f"lorakit-{'packed' if packing else 'unpacked'}"), "overwrite": True,
                   "plot": False, "report_to": "none", "save_best": False},
    }


def run_lorakit(work: Path, plan: dict, packing: bool, widen: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from lorakit.io.keys import to_file_key
    from lorakit.train import state as S
    from lorakit.train.config import TrainConfig
    from lorakit.train.hooks import TrainHook
    from lorakit.train.metrics import read_metrics
    from lorakit.train.trainer import Trainer

    stamps: list[float] = []

    class Clock(TrainHook):
        def on_step_end(self, model, step):
            stamps.append(time.perf_counter())

    cfg = TrainConfig.from_dict(lorakit_config(work, plan, packing, widen))
    trainer = Trainer(cfg, hooks=[Clock()])
    init = load_file(str(work / "init" / "adapter_model.safetensors"))  # the same start as TRL's PEFT model
    copied = 0
    with torch.no_grad():
        for key, tensor in trainer.raw.state_dict().items():
            file_key = to_file_key(key, "default")
            if file_key in init:
                tensor.copy_(init[file_key])
                copied += 1
    if copied != len(init):
        raise SystemExit(f"loaded {copied} of the {len(init)} initial adapter tensors")
    start = time.perf_counter()
    trainer.train()
    size = len(trainer.train_set)
    steps = [S.step_indices(s, size, trainer.global_batch, plan["seed"]) for s in range(plan["steps"])]
    tokens = [sum(len(trainer.train_set[i]["input_ids"]) for i in chosen) for chosen in steps]  # no padding in them
    losses = [r["loss"] for r in read_metrics(Path(cfg.output.dir) / "metrics.jsonl") if r.get("kind") == "train"]
    return {"stamps": [t - start for t in stamps], "tokens": tokens, "losses": losses}


# -- TRL + PEFT ------------------------------------------------------------------------------------------------------
def run_trl(work: Path, plan: dict, lean: bool, packing: bool) -> dict[str, Any]:
    import datasets
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    stamps: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer as it is, counting the real tokens of each step (padding-free rows have no padding)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else int(inputs["position_ids"].shape[1]))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class LeanSFTTrainer(CountingSFTTrainer):
        """SFTTrainer without its per-step entropy and token accuracy: the same loss, from the fused head's
        log-probabilities alone (TRL has no switch for these metrics)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else int(inputs["position_ids"].shape[1]))
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            return -outputs.log_probs.sum() / torch.as_tensor(count).clamp(min=1)

    torch.manual_seed(plan["seed"])
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(model, work / "init", is_trainable=True)
    # padded runs keep lorakit's order (the loss curves are compared); the packed run packs every example
    rows = [json.loads(line) for line in (work / ("trl_packed.jsonl" if packing else "trl_ordered.jsonl")).open()]
    name = f"trl-{'lean' if lean else 'default'}{'-packed' if packing else ''}"
    args = SFTConfig(
        output_dir=str(work / "runs" / name), max_steps=plan["steps"],
        per_device_train_batch_size=plan["batch"], learning_rate=plan["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=plan["seed"], logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, bf16=False,
        dataloader_num_workers=0, max_length=plan["seq"], completion_only_loss=True, packing=packing,
        train_sampling_strategy="random" if packing else "sequential",
    )
    klass = LeanSFTTrainer if lean else CountingSFTTrainer
    trainer = klass(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                    processing_class=tokenizer, callbacks=[Clock()])
    if lean:  # the fused head computes the log-probabilities only (not entropy / top-1)
        add_fused_lm_head(trainer.model.get_base_model(), outputs=("log_probs",))
    start = time.perf_counter()
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"stamps": [t - start for t in stamps], "tokens": tokens, "losses": losses}


def main(argv: list[str]) -> int:
    """VARIANTS (comma-separated; several only in quick mode, where one process per framework saves imports) WORK
    RESULT.json -> {variant: its result}."""
    variants, work, result = argv[0].split(","), Path(argv[1]), Path(argv[2])
    plan = json.loads((work / "plan.json").read_text())
    if plan.get("threads"):
        import torch

        torch.set_num_threads(plan["threads"])
    out = {}
    for variant in variants:
        framework, settings = VARIANTS[variant]
        runner = run_lorakit if framework == "lorakit" else run_trl
        out[variant] = runner(work, plan, **settings)
        out[variant].update(variant=variant, peak_rss_mib=peak_rss_mib())
    result.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
