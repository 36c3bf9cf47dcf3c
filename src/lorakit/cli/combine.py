"""Combine several adapters of one base model into one adapter (PEFT's format), with lorakit.combine_adapters.

With weights w_i and the adapters' updates ΔW_i = s_i B_i A_i (per layer; a layer only some adapters adapt
takes the sum over those):
  linear       A = sum sqrt|w_i s_i| A_i, B = sum sign(w_i s_i) sqrt|w_i s_i| B_i; needs one rank (default)
  cat          exact: ΔW = sum w_i ΔW_i (rank: the sum of the ranks)
  svd          the best rank-k approximation of sum w_i ΔW_i (--svd-rank k; default: the largest input rank)
  ties         TIES-merging of the A's and of the B's (--density: fraction kept; --majority-sign)
  dare_linear  DARE (drop 1 - density at random, rescale; --seed) then linear
  dare_ties    DARE then TIES

The base model is --base, else the one the first adapter was trained on (its run's train_config.yaml, else its
adapter_config.json's base_model_name_or_path when that is a local model directory), as for `lorakit merge`.
OUT is written aside and renamed into place when complete.

examples:
  lorakit combine runs/a runs/b --out combined --weights 0.7 0.3 --method cat
  lorakit combine runs/a runs/b --out combined --method svd --svd-rank 8
  lorakit combine runs/a runs/b runs/c --out combined --method ties --density 0.3 --base ./tiny-llama
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.combine import METHODS
from lorakit.errors import ConfigError

DENSITY_METHODS = ("ties", "dare_linear", "dare_ties")
SIGN_METHODS = ("ties", "dare_ties")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter directories, all for one base")
    parser.add_argument("--out", "-o", required=True, help="directory to write the combined adapter to")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="one weight per adapter (default: 1 each)")
    parser.add_argument("--method", default="linear", choices=list(METHODS))
    parser.add_argument("--svd-rank", type=int, help="svd: rank of the result (default: the largest input rank)")
    parser.add_argument("--density", type=float,
                        help=f"{', '.join(DENSITY_METHODS)}: fraction of entries kept (default 0.5)")
    parser.add_argument("--majority-sign", choices=["total", "frequency"],
                        help="ties, dare_ties: elect each entry's sign by total mass (default) or by count")
    parser.add_argument("--seed", type=int, default=0, help="dare_*: seed of the random drop")
    parser.add_argument("--base", help="local model directory the adapters were trained on (default: see above)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT even if it is not empty")


def check_options(args: argparse.Namespace) -> list[float]:
    """The weights; options that do not apply to the method are refused rather than ignored."""
    weights = args.weights if args.weights is not None else [1.0] * len(args.adapters)
    if len(weights) != len(args.adapters):
        raise ConfigError(f"--weights: give one weight per adapter ({len(args.adapters)} adapters, "
                          f"{len(weights)} weights)")
    if args.svd_rank is not None and (args.method != "svd" or args.svd_rank < 1):
        raise ConfigError("--svd-rank takes a rank >= 1 and applies to --method svd only")
    if args.density is not None and args.method not in DENSITY_METHODS:
        raise ConfigError(f"--density applies to --method {' / '.join(DENSITY_METHODS)} only")
    if args.majority_sign is not None and args.method not in SIGN_METHODS:
        raise ConfigError(f"--majority-sign applies to --method {' / '.join(SIGN_METHODS)} only")
    return weights


def check_same_base(adapters: list[Path]) -> None:
    """Adapters recorded for different base models cannot be combined (a different architecture is also caught
    by each adapter's fingerprint when it loads)."""
    from lorakit.cli.base_model import recorded_base

    bases = {str(path): recorded_base(path) for path in adapters}
    known = {path: base for path, base in bases.items() if base is not None}
    if len(set(known.values())) > 1:
        listing = "; ".join(f"{path}: {base}" for path, base in known.items())
        raise ConfigError(f"the adapters were trained on different base models ({listing}); combine adapters of "
                          "one base (or pass --base if these name the same model)")


def run(args: argparse.Namespace) -> int:
    import lorakit
    from lorakit.cli.base_model import base_for_adapter, loading_base
    from lorakit.cli.output_dir import check_output, output_directory
    from lorakit.hf.adapter_model import model_config_for_adapter
    from lorakit.hf.hub import local_adapter
    from lorakit.hf.models import load_model
    from lorakit.hf.quiet import quiet_transformers

    weights = check_options(args)
    adapters, out = [local_adapter(a) for a in args.adapters], Path(args.out)  # Hub ids: their snapshots
    if args.base is None:
        check_same_base(adapters)
    base_path = base_for_adapter(adapters[0], args.base, "combine")
    check_output(out, args.overwrite, {f"the adapter {a}": a for a in adapters})
    model_cfg, labels = model_config_for_adapter(adapters[0], "auto", base_path)
    quiet_transformers()
    with output_directory(out) as tmp:
        with loading_base(base_path):
            if model_cfg is None:
                from transformers import AutoModel

                from lorakit.hf.models import from_pretrained

                model = from_pretrained(AutoModel, base_path)
            else:
                model_cfg.quantization = None  # the combination is of the adapters' own tensors
                model = load_model(model_cfg, base_path, labels)
        names = [f"input{i}" for i in range(len(adapters))]
        for name, adapter in zip(names, adapters, strict=True):
            lorakit.load_adapter(model, adapter, adapter_name=name)
        lorakit.combine_adapters(model, names, weights, "default", method=args.method, rank=args.svd_rank,
                                 density=0.5 if args.density is None else args.density, seed=args.seed,
                                 majority_sign=args.majority_sign or "total")
        lorakit.save_adapter(model, tmp, "default")
    print(f"lorakit combine: wrote {out} ({args.method} of {len(adapters)} adapters, weights {weights}); "
          f"load it like any adapter, e.g. lorakit.load_adapter(model, {str(out)!r})")
    return 0
