"""TrainConfig: what `lorakit train` does, as five sections (model / lora / data / training / output), plus the
optional sections registered variants add (lorakit.variants.registry: `section`), off when absent or null.

The `lora` section is a variant's own config class when its peft_type is a registered variant's (e.g. an SVD-form one);
variants switched on by a LoraConfig flag need nothing here.

Loaded from YAML, then `section.key=value` overrides from the command line. Unknown sections or keys are an
error that lists the valid ones; values are coerced by the field's type (PyYAML reads 3e-4 as a string).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lorakit.config import BOOL_WORDS, LoraConfig, coerce
from lorakit.errors import ConfigError
from lorakit.hf.config import ModelConfig, check_choice  # the `model:` section; lives with the loading code
from lorakit.train.data import DataConfig
from lorakit.train.diffusion.config import DiffusionConfig, check_text_to_image
from lorakit.train.methods import METHODS, check_method
from lorakit.train.trackers import TRACKERS  # what output.report_to may list
from lorakit.variants.registry import for_section, training_sections
from lorakit.variants.training import adapter_config_from_dict

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "no")
DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class TrainingConfig:
    # lora (adapters) | full (every weight: full fine-tuning) | probe (only a new classification head, on frozen
    # features); the same trainer, data, loss and evaluation for all three (lorakit/train/methods.py)
    method: str = "lora"
    seed: int = 0  # seeds weights of new heads, data order, dropout
    epochs: int = 1  # passes over the training data (max_steps wins when set)
    max_steps: int | None = None  # optimizer steps in total
    batch_size: int = 8  # examples per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size * grad_accum * processes)
    lr: float = 2e-4  # peak learning rate
    head_lr: float | None = None  # learning rate of modules_to_save (e.g. a new classification head); None: lr
    # LoRA+ (Hayou et al. 2024): lora_B learns `loraplus_lr_ratio` times faster than lora_A. 1.0 is plain LoRA;
    # the paper's suggestion is 16
    loraplus_lr_ratio: float = 1.0
    weight_decay: float = 0.0  # AdamW decoupled weight decay (not applied to biases)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | constant (all after warmup)
    warmup_steps: int = 0  # linear warmup from 0; warmup_ratio is used when this is 0
    warmup_ratio: float = 0.0  # fraction of all steps
    min_lr_ratio: float = 0.0  # the schedule ends at min_lr_ratio * lr
    max_grad_norm: float | None = 1.0  # clip the global gradient norm; None: no clipping
    mixed_precision: str = "auto"  # auto: bf16 autocast on a GPU that supports it, else fp32 | bf16 | no
    deterministic: bool = True  # torch.use_deterministic_algorithms: reproducible runs, exact resume
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    num_threads: int | None = None  # CPU threads for torch (None: torch's default)
    eval_every: int | None = None  # evaluate every N optimizer steps; None: at the end of each epoch
    eval_batch_size: int | None = None  # None: 2 * batch_size
    metric: str = "auto"  # what "best" means: auto (accuracy for seq-cls, else loss) | loss | accuracy | f1
    early_stopping_patience: int | None = None  # stop after N evaluations without improvement; None: never
    save_every: int | None = None  # write a resumable checkpoint every N optimizer steps; None: never
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    log_every: int = 1  # write a metrics line every N optimizer steps
    distributed: str = "ddp"  # under torchrun: ddp (replicated base) | fsdp (sharded base)
    # a tqdm bar on a terminal; plain progress lines in logs / CI / pipes (train/console.py); false: neither
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            _positive(f"training.{name}", getattr(self, name))
        for name in ("max_steps", "eval_every", "eval_batch_size", "save_every", "early_stopping_patience",
                     "num_threads"):
            if getattr(self, name) is not None:
                _positive(f"training.{name}", getattr(self, name))
        for name in ("lr", "loraplus_lr_ratio", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"training.{name}={getattr(self, name)!r}: expected a positive number")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ConfigError(f"training.head_lr={self.head_lr!r}: expected a positive number or null")
        if len(self.adam_betas) != 2 or not all(0 <= float(b) < 1 for b in self.adam_betas):
            raise ConfigError(f"training.adam_betas={self.adam_betas!r}: expected two numbers in [0, 1)")
        self.adam_betas = [float(b) for b in self.adam_betas]
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ConfigError(
                f"training: warmup_steps={self.warmup_steps}, warmup_ratio={self.warmup_ratio}, min_lr_ratio="
                f"{self.min_lr_ratio}: expected warmup_steps >= 0, warmup_ratio in [0, 1), min_lr_ratio in [0, 1]"
            )
        check_choice("training.method", self.method, METHODS)
        check_choice("training.scheduler", self.scheduler, SCHEDULES)
        check_choice("training.mixed_precision", self.mixed_precision, PRECISIONS)
        check_choice("training.distributed", self.distributed, DISTRIBUTED)
        check_choice("training.metric", self.metric, ("auto", "loss", "accuracy", "f1"))
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"training.device={self.device!r}: expected auto, cpu, cuda, cuda:N or mps")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"training.max_grad_norm={self.max_grad_norm!r}: expected a positive number or null")


@dataclass
class OutputConfig:
    dir: str = "lorakit-output"  # adapter (PEFT format), resolved config, metrics, plots, checkpoints/, best/
    # allow a fresh run into a directory that already holds a run; the old run is kept aside until the new one
    # saves its first adapter or checkpoint, and put back if it fails before that
    overwrite: bool = False
    adapter_name: str = "default"
    save_best: bool = True  # keep the adapter of the best evaluation in <dir>/best
    plot: bool = True  # curves.png (loss, eval, learning rate) and, for LoRA, spectrum.png (needs matplotlib)
    # trackers that get the metrics besides <dir>/metrics.jsonl: a list of tensorboard | mlflow | wandb;
    # auto: TensorBoard when installed (plus what output.tensorboard / output.mlflow below ask for); none or []: only
    # metrics.jsonl. TensorBoard: <dir>/tensorboard. MLflow: MLFLOW_TRACKING_URI (and MLFLOW_EXPERIMENT_NAME).
    # W&B: project WANDB_PROJECT (default lorakit), files in WANDB_DIR or <dir>; the mode is WANDB_MODE, and when
    # that is unset, offline unless WANDB_API_KEY is set (a run never waits on the network by surprise;
    # `wandb sync <dir>/wandb/offline-run-*` uploads it later)
    report_to: list[str] | str = "auto"
    run_name: str | None = None  # the run's name for trackers and plot titles; None: the output folder's name
    # the older switches, still read: with report_to auto they choose as they always did; next to a report_to list
    # they must agree with it (tensorboard: true needs tensorboard listed, false needs it absent)
    tensorboard: bool | str = "auto"  # auto (when the tensorboard package is installed) | true | false
    mlflow: bool = False  # true: also log to MLflow

    def __post_init__(self) -> None:
        word = str(self.tensorboard).strip().lower()
        if word != "auto" and word not in BOOL_WORDS:
            raise ConfigError(f"output.tensorboard={self.tensorboard!r}: expected auto, or a boolean (true/false, "
                              "yes/no, on/off, 1/0)")
        self.tensorboard = word if word == "auto" else str(BOOL_WORDS[word]).lower()
        self.report_to = _tracker_list(self.report_to)
        if self.report_to == "auto":
            return
        listed = self.report_to
        if (self.tensorboard == "true") != ("tensorboard" in listed) and self.tensorboard != "auto":
            raise ConfigError(f"output.tensorboard={self.tensorboard} contradicts output.report_to={listed}; drop "
                              "output.tensorboard (report_to alone says where metrics go)")
        if self.mlflow and "mlflow" not in listed:
            raise ConfigError(f"output.mlflow=true contradicts output.report_to={listed}; add mlflow to "
                              "output.report_to and drop output.mlflow")

    def name_of_run(self) -> str:
        """run_name, else the output folder's name (the folder a relative dir names, as now resolved)."""
        return self.run_name or Path(self.dir).resolve().name or "lorakit"


def _tracker_list(value: list[str] | str) -> list[str] | str:
    """"auto", or the trackers asked for as a list without repeats ("none" and [] are the empty list)."""
    words = [value] if isinstance(value, str) else list(value)
    words = [str(w).strip().lower() for w in words if str(w).strip()]
    if words == ["auto"]:
        return "auto"
    if words == ["none"]:
        return []
    unknown = [w for w in words if w not in TRACKERS]
    if unknown:
        raise ConfigError(f"output.report_to={value!r}: unknown tracker(s) {unknown}; expected a list of "
                          f"{' | '.join(TRACKERS)}, or auto, or none")
    return list(dict.fromkeys(words))


REQUIRED_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "lora": LoraConfig, "data": DataConfig, "training": TrainingConfig, "output": OutputConfig,
}


# sections of one model.task (absent or null: off). model.task=text-to-image fills in `diffusion` with its defaults;
# a `diffusion:` section without a model.task implies text-to-image (with another task it is refused)
TASK_SECTIONS: dict[str, type] = {"diffusion": DiffusionConfig}


def all_sections() -> dict[str, type]:
    """The required sections, the task sections and the registered variants' (a variant's section: None when off)."""
    return {**REQUIRED_SECTIONS, **TASK_SECTIONS, **training_sections()}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    variants: dict[str, Any] = field(default_factory=dict)  # variant section name -> its config (None: off)
    diffusion: DiffusionConfig | None = None  # model.task=text-to-image only (train/diffusion/config.py)

    def __post_init__(self) -> None:
        """Combinations the variants (and tasks) cannot run, refused before any model is loaded."""
        if self.model.task == "text-to-image":
            self.diffusion = self.diffusion or DiffusionConfig()
            check_text_to_image(self)
        elif self.diffusion is not None:
            raise ConfigError(f"the diffusion: section applies to model.task=text-to-image; model.task is "
                              f"{self.model.task!r}. Remove the section or set model.task=text-to-image")
        for name in training_sections():
            self.variants.setdefault(name, None)
        check_method(self)
        for name, section in self.variants.items():
            check = for_section(name).training.check
            if section is not None and check is not None:
                check(self)

    def __getattr__(self, name: str) -> Any:
        """A variant section by its name (cfg.<section>), None when off."""
        if name.startswith("__") or name == "variants":
            raise AttributeError(name)
        if name in training_sections():
            return self.variants.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in REQUIRED_SECTIONS}
        out["lora"] = self.lora.to_dict()
        if self.diffusion is not None:
            out["diffusion"] = dataclasses.asdict(self.diffusion)
        for name in training_sections():
            section = self.variants.get(name)
            out[name] = None if section is None else dataclasses.asdict(section)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"a training config is a mapping of sections {list(all_sections())}, got {values!r}")
        unknown = sorted(set(values) - set(all_sections()))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; valid sections: {list(all_sections())}")
        if values.get("diffusion") is not None and "task" not in (values.get("model") or {}):
            values = {**values, "model": {**(values.get("model") or {}), "task": "text-to-image"}}  # implied
        sections = {name: build_section(klass, values.get(name) or {}, name)
                    for name, klass in REQUIRED_SECTIONS.items()}
        variants = {name: None if values.get(name) is None else build_section(klass, values[name], name)
                    for name, klass in training_sections().items()}  # absent or null: off; {} : on, with defaults
        tasks = {name: None if values.get(name) is None else build_section(klass, values[name], name)
                 for name, klass in TASK_SECTIONS.items()}
        return cls(**sections, **tasks, variants=variants)


def build_section(klass: type, values: Any, section: str) -> Any:
    """A section dataclass from a mapping: unknown keys are an error listing the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} should be a mapping of settings, got {values!r}")
    if klass is LoraConfig:
        try:
            return adapter_config_from_dict(values)  # a variant's config class when its peft_type says so
        except ConfigError as exc:
            raise ConfigError(f"lora: {exc}") from None
    names = [f.name for f in dataclasses.fields(klass)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[f'{section}.{k}' for k in unknown]}; valid keys in {section!r}: {sorted(names)}"
        )
    hints = typing.get_type_hints(klass)
    try:
        return klass(**{k: coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()})
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(f"{section}.") else f"{section}: {message}") from None
    except (TypeError, ValueError) as exc:  # a section's own validation that is not a ConfigError yet
        raise ConfigError(f"{section}: {exc}") from None


def apply_override(values: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML: 16, 3e-4, [q_proj, v_proj], null)."""
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"override {override!r}: expected section.key=value (e.g. training.lr=3e-4, lora.r=16); "
            f"sections: {list(all_sections())}"
        )
    if parts[0] not in all_sections():
        raise ConfigError(f"override {override!r}: unknown section {parts[0]!r}; valid sections: "
                          f"{list(all_sections())}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    section = values.setdefault(parts[0], {})
    if section is None:
        section = values[parts[0]] = {}
    if len(parts) == 2:
        section[parts[1]] = value
    else:  # a key inside a dict field, e.g. lora.rank_pattern.layers.0.q_proj=4 (module paths hold dots)
        inner = section.setdefault(parts[1], {})
        if not isinstance(inner, dict):
            raise ConfigError(f"override {override!r}: {parts[0]}.{parts[1]} is not a mapping")
        inner[".".join(parts[2:])] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: str | None = None) -> TrainConfig:
    """Read a YAML config (or the YAML text `base` when path is None), apply overrides, validate."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        text = file.read_text(encoding="utf-8")
        where = str(file)
    else:
        text, where = base or "", "built-in config"
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}:{line} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of sections {list(all_sections())}, "
                          f"found {type(values).__name__}")
    for override in overrides:
        apply_override(values, override)
    return TrainConfig.from_dict(values)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}: expected a positive integer")


def __getattr__(name: str) -> Any:
    if name == "SECTIONS":  # every section, the registered variants' included (computed: variants may register late)
        return all_sections()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
