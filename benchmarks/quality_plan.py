"""What benchmarks/quality.py runs: the methods, their overrides, the learning-rate grids, and the sizes.

Every MiniLM method starts from the demo's config (src/lorakit/data/demo.yaml: Rotten Tomatoes, all-MiniLM-L6-v2,
mean pooling + a new head, batch 16) and changes only what makes it that method. Each method's learning rate is
chosen from its grid on the VALIDATION split with seed 0; the test split is read only by the final runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    key: str
    name: str  # the row's name in QUALITY.md
    overrides: tuple[str, ...]
    grid: tuple[float, ...]  # training.lr values tried on validation
    # without a grid (quick mode, --no-grid): the demo's lr for its method, chosen on the validation split
    # (src/lorakit/data/demo.yaml's header); the LoRA variants take LoRA's
    default_lr: float


LORA_HEAD = ("training.method=lora", "training.head_lr=1.0e-2")
ADALORA = ("lora.peft_type=ADALORA", "lora.init_r=8", "lora.target_r=4", "lora.lora_alpha=16",
           "lora.target_modules=[query,value]")

METHODS: tuple[Method, ...] = (
    Method("full", "full fine-tuning", ("training.method=full", "training.head_lr=1.0e-3", "training.warmup_ratio=0.1"),
           (5e-5, 1e-4), 5e-5),
    Method("lora_qv", "LoRA r=8 query,value", LORA_HEAD, (1e-3, 3e-3), 3e-3),
    Method("lora_all", "LoRA r=8 all-linear", (*LORA_HEAD, "lora.target_modules=all-linear"), (1e-3, 3e-3), 3e-3),
    Method("dora", "DoRA r=8 query,value", (*LORA_HEAD, "lora.use_dora=true"), (1e-3, 3e-3), 3e-3),
    Method("qlora", "QLoRA r=8 query,value (NF4 base)",
           (*LORA_HEAD, "model.quantization=nf4", "model.compute_dtype=float32"), (1e-3, 3e-3), 3e-3),
    Method("adalora", "AdaLoRA r=8 to 4 query,value", (*ADALORA, *LORA_HEAD), (3e-3, 1e-2), 3e-3),
    Method("probe", "linear probe (frozen encoder)", ("training.method=probe", "training.head_lr=null"),
           (1e-2, 3e-2), 1e-2),
)
METHOD_KEYS = tuple(m.key for m in METHODS)


@dataclass(frozen=True)
class Sizes:
    """How big each part is; QUALITY.md prints them. Full mode's defaults were never run to the end on the 2-core
    machine (at ~1 min per run there, its 35 runs take well over half an hour); --steps etc. shrink them."""

    seeds: int = 3
    steps: int = 60  # MiniLM optimizer steps per run (batch 16)
    max_seq_len: int = 48
    val_rows: int | None = 400  # validation rows (the grid's yardstick); None: all 1,195
    test_rows: int | None = None  # test rows; None: all 1,279
    grid: bool = True
    smol_train_rows: int = 160
    smol_val_rows: int = 40
    smol_steps: int = 40
    smol_batch: int = 4
    smol_seq_len: int = 192
    smol_lora_lr: float = 1e-3
    smol_full_lr: float = 2e-5
    general_rows: int = 40  # paragraphs of general text (perplexity before / after)


QUICK = Sizes(seeds=1, steps=3, max_seq_len=32, val_rows=32, test_rows=48, grid=False, smol_train_rows=8,
              smol_val_rows=4, smol_steps=2, smol_batch=2, smol_seq_len=160, general_rows=4)


def minilm_overrides(method: Method, lr: float, seed: int, sizes: Sizes, files: dict, out_dir: str) -> list[str]:
    """The override list of one MiniLM run (applied on top of the demo's config, in order)."""
    extra = [] if any(o.startswith("training.head_lr") for o in method.overrides) else ["training.head_lr=1.0e-2"]
    if method.key == "adalora":  # AdaLoRA's schedule must fit in the run: prune in the middle third
        third = max(sizes.steps // 3, 1)
        extra += [f"lora.tinit={third}", f"lora.tfinal={third}", "lora.deltaT=1", f"lora.total_step={sizes.steps}"]
    return [*method.overrides, *extra, f"training.lr={lr}", f"training.seed={seed}",
            f"training.max_steps={sizes.steps}", f"data.max_seq_len={sizes.max_seq_len}",
            f"data.train_file={files['train']}", f"data.validation_file={files['validation']}",
            f"data.test_file={files['test']}", "training.progress=false", "output.plot=false",
            "output.tensorboard=false", "output.overwrite=true", f"output.dir={out_dir}"]


def smol_overrides(method: str, model_path: str, sizes: Sizes, files: dict, out_dir: str) -> list[str]:
    """SmolLM2 chat SFT: LoRA r=8 on every linear layer, or full fine-tuning; the same data, batch and steps."""
    lr = sizes.smol_lora_lr if method == "lora" else sizes.smol_full_lr
    adapter = ["lora.r=8", "lora.lora_alpha=16", "lora.target_modules=all-linear"] if method == "lora" else []
    return [f"model.path={model_path}", "model.task=causal-lm", f"training.method={method}", *adapter,
            f"training.lr={lr}", "training.seed=0", f"training.max_steps={sizes.smol_steps}",
            f"training.batch_size={sizes.smol_batch}", "training.warmup_ratio=0.1", "training.scheduler=cosine",
            "data.format=chat", f"data.max_seq_len={sizes.smol_seq_len}", f"data.train_file={files['train']}",
            f"data.validation_file={files['validation']}", "training.progress=false", "output.plot=false",
            "output.tensorboard=false", "output.overwrite=true", "output.save_best=false", f"output.dir={out_dir}"]
