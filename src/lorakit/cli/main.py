"""`lorakit <command>`: the root of the CLI. Each command lives in lorakit/cli/<command>.py and provides
`add_arguments(parser)` and `run(args) -> int`; this file only dispatches and turns user errors into one line."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from types import ModuleType

from lorakit.cli.os_errors import describe_os_error
from lorakit.errors import LorakitError
from lorakit.version import __version__

# command -> (module, one-line help). A command whose module is absent is simply not offered.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lorakit.cli.demo",
             "all-MiniLM-L6-v2 on Rotten Tomatoes: probe, LoRA, full (the default job); `demo chat`: SmolLM2"),
    "train": ("lorakit.cli.train", "fine-tune a model with LoRA from a YAML config"),
    "merge": ("lorakit.cli.merge", "merge an adapter into its base and write a plain transformers model"),
    "inspect": ("lorakit.cli.inspect", "show an adapter's config, ranks, sizes and singular-value spectra"),
    "combine": ("lorakit.cli.combine", "combine several adapters into one (linear, cat, svd, ties, dare)"),
    "resize": ("lorakit.cli.resize", "change an adapter's rank: best rank-k (SVD) per layer, --rank K or --energy"),
    "generate": ("lorakit.cli.generate", "generate text with a causal LM, with or without an adapter"),
    "eval": ("lorakit.cli.eval", "evaluate a model (+ adapter) on a dataset"),
    "convert": ("lorakit.cli.convert", "convert a diffusion LoRA between diffusers, kohya / A1111 and PEFT files"),
    "sweep": ("lorakit.cli.sweep", "search hyperparameters with Optuna (resumable, many workers, pruning)"),
    "serve": ("lorakit.cli.serve", "serve a base model and many adapters over an OpenAI-compatible HTTP API"),
}


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="lorakit",
        description="LoRA adapters for PyTorch and Hugging Face models. With no command, runs `lorakit demo`.",
    )
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, ModuleType] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        command = sub.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        modules[name] = module
    return parser, modules


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler's stop), raised in the main thread so that a command cleans up as
    it does on Ctrl-C: trackers marked failed, an output folder given back to the run it was replacing."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if argv is None and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the command line, and no handler of the caller's
        signal.signal(signal.SIGTERM, _raise_terminated)
    argv = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser()
    if not argv and "demo" in modules:
        argv = ["demo"]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(modules[args.command].run(args) or 0)
    except LorakitError as exc:
        print(f"lorakit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, a file where a folder should be: the user's to fix
        print(f"lorakit {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"lorakit {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"lorakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
