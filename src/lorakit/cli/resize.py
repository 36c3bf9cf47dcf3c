"""Change an adapter's rank: each layer's update s * B @ A replaced by its best rank-k approximation (truncated
SVD; lorakit/resize.py), written as a plain LoRA adapter in PEFT's format. Needs no base model.

--rank K gives every layer rank min(K, its rank); --energy 0.9 gives each layer the smallest rank keeping 90% of
its update's energy (sum of squared singular values; `lorakit inspect --suggest-rank` shows these ranks first).
The scale is folded into the factors: the new file has lora_alpha = r in every layer (scaling 1), and where the
ranks differ its adapter_config.json has rank_pattern / alpha_pattern, which PEFT reads. Plain LoRA only (a DoRA
or other variant adapter is refused). OUT is written aside and renamed into place when complete.

examples:
  lorakit resize runs/alpaca runs/alpaca-r4 --rank 4
  lorakit resize runs/alpaca runs/alpaca-e90 --energy 0.9
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lorakit.errors import AdapterFileError, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="adapter directory")
    parser.add_argument("out", help="directory to write the resized adapter to")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, metavar="K", help="every layer's rank at most K")
    how.add_argument("--energy", type=float, metavar="SHARE",
                     help="per layer, the smallest rank keeping this share of the update's energy, in (0, 1]")
    parser.add_argument("--name", default="default", help="adapter name inside a multi-adapter directory")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT even if it is not empty")


def run(args: argparse.Namespace) -> int:
    from lorakit.cli.output_dir import check_output, output_directory
    from lorakit.io.adapter_consistency import first_problem
    from lorakit.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_adapter, write_files
    from lorakit.io.metadata import CONFIG_SHA, WEIGHTS_SHA
    from lorakit.resize import check_energy, resize_file
    from lorakit.version import __version__

    if args.rank is not None and args.rank < 1:
        raise ConfigError(f"--rank {args.rank}: expected a rank >= 1")
    if args.energy is not None:
        check_energy(args.energy)
    file = read_adapter(args.adapter, args.name)
    problem = first_problem(file.config, file.tensors)
    if problem:
        raise AdapterFileError(f"{file.directory} does not agree with its {CONFIG_NAME}: {problem}")
    out = Path(args.out)
    check_output(out, args.overwrite, {"the adapter": file.directory})
    config, tensors, report = resize_file(file, rank=args.rank, energy=args.energy)
    records = {k: v for k, v in file.records.items() if k not in (WEIGHTS_SHA, CONFIG_SHA)}  # made afresh
    records["lorakit_version"] = __version__
    # files beside the adapter that do not depend on its rank (a pooled classifier's adapter_head.safetensors)
    written = (WEIGHTS_NAME, CONFIG_NAME)
    sidecars = [f for f in file.directory.glob("adapter_*") if f.is_file() and f.name not in written]
    with output_directory(out) as tmp:
        write_files(tmp, config, tensors, records)
        for sidecar in sidecars:
            shutil.copy2(sidecar, tmp / sidecar.name)
    old = sum(f.stat().st_size for f in file.directory.glob("adapter_*") if f.is_file())
    new = sum(f.stat().st_size for f in out.glob("adapter_*") if f.is_file())
    ranks = sorted({item.new_rank for item in report})
    worst = min((item.kept for item in report), default=1.0)
    print(f"lorakit resize: wrote {out}: {len(report)} layers, ranks {ranks} (from "
          f"{sorted({item.old_rank for item in report})}), lowest energy kept {worst:.4f}; "
          f"size {old:,} -> {new:,} bytes ({new / old:.2f}x)")
    return 0
