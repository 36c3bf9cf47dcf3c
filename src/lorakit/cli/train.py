"""Fine-tune a model with LoRA from a YAML config, with `section.key=value` overrides.

examples:
  lorakit train configs/alpaca-tiny.yaml                      # causal LM, alpaca data, a local tiny model
  lorakit train configs/seq-cls.yaml lora.r=16 training.lr=3e-4 output.dir=runs/r16
  lorakit train configs/text-to-image-tiny.yaml                # a diffusers pipeline (model.task: text-to-image)
  lorakit train configs/demo.yaml training.save_every=20 --resume    # continue from the newest checkpoint
  lorakit train configs/demo.yaml --resume-from runs/demo/checkpoints/step-00000040
  lorakit train configs/alpaca-tiny.yaml --nproc 2             # 2 processes (DDP; gloo on CPU, nccl on GPU)
  torchrun --nproc_per_node 2 -m lorakit train configs/alpaca-tiny.yaml training.distributed=fsdp
  lorakit train --print-config                                 # the resolved demo config

Without CONFIG, trains the demo's LoRA run: all-MiniLM-L6-v2 on Rotten Tomatoes reviews (`lorakit demo` also
runs the linear probe and full fine-tuning). Sections: model, lora (every LoraConfig field), data, training,
output; configs/*.yaml comment every setting. The output directory receives the adapter (PEFT format),
train_config.yaml (the resolved config), metrics.jsonl, curves.png, spectrum.png, summary.json, best/ and
checkpoints/; output.report_to=tensorboard,mlflow,wandb also sends the metrics to those trackers. Before step 1 the
run prints a summary (data, steps, parameters, changed settings), then one line per evaluation.
A start that fails or is refused leaves the output directory as it was; output.overwrite=true keeps the old run
until the new one has saved an adapter or a checkpoint; --resume on a finished run does nothing. With --nproc N,
the start-up checks run once, before torchrun starts the workers.
"""

from __future__ import annotations

import argparse
import os

from lorakit.errors import ConfigError


def define(parser: argparse.ArgumentParser, items_nargs: str | None = "*") -> None:
    parser.add_argument("items", nargs=items_nargs, metavar="CONFIG|KEY=VALUE",
                        help="a YAML config file, then overrides such as lora.r=16 training.lr=3e-4")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in output.dir (a fresh start when there is none)")
    parser.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="train with N processes on this machine (launches torchrun)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    define(parser, argparse.REMAINDER)  # options may follow the overrides; run() parses the rest


def reparse(args: argparse.Namespace, define_options, prog: str, description: str | None = None) -> argparse.Namespace:
    """Options given after positional items (`lorakit train cfg.yaml lora.r=4 --resume`): argparse's
    subcommands cannot intermix, so the items are parsed again by a plain parser that can."""
    inner = argparse.ArgumentParser(prog=prog, description=description or __doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    define_options(inner)
    parsed = inner.parse_intermixed_args(args.items)
    for key, value in vars(parsed).items():
        if key != "items" and (value is None or value is False):  # not `in (None, False)`: 0 == False
            setattr(parsed, key, getattr(args, key, value))
    return parsed


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """(config file or None, overrides). Overrides contain '='; at most one item is a config file."""
    files = [item for item in items if "=" not in item]
    if len(files) > 1:
        raise ConfigError(f"expected one config file, got {files}; overrides look like section.key=value")
    return (files[0] if files else None), [item for item in items if "=" in item]


def load_train_config(items: list[str]):
    from lorakit.demo.settings import DEMO_YAML
    from lorakit.train.config import load_config

    config, overrides = split_items(items)
    return load_config(config, overrides, base=DEMO_YAML if config is None else None)


def run(args: argparse.Namespace) -> int:
    args = reparse(args, define, "lorakit train")
    resume = args.resume_from or args.resume or None
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: expected a positive number of processes (1 runs in this process)")
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.train.prepare import resolve_config
    from lorakit.train.report import format_summary
    from lorakit.train.run import check_start, train

    cfg = load_train_config(args.items)
    if args.print_config:
        if cfg.model.task == "text-to-image":  # a pipeline folder, not a model with config.json
            from lorakit.train.diffusion.config import resolve_text_to_image as resolve_config
        print(resolve_config(cfg).to_yaml(), end="")
        return 0
    quiet_transformers()
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from lorakit.train.distributed import launch_torchrun

        # every start-up check here first, writing nothing: a bad config is one line, not one per worker
        check_start(cfg, resume, world_size=args.nproc)
        argv = list(args.items)
        argv += ["--resume-from", args.resume_from] if args.resume_from else ["--resume"] if args.resume else []
        return launch_torchrun(args.nproc, argv)
    result = train(cfg, resume=resume)
    if result.is_main:
        print("lorakit train: done\n" + format_summary(result.summary), flush=True)
    return 0
