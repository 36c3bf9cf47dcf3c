"""Show an adapter: its config, each adapted layer's rank, parameter count and the singular values of its update
scaling * B @ A, the size on disk, and a PNG of those spectra: one panel per module type (q_proj, ...), each layer a
line coloured by its depth, one shared scale (lorakit/spectrum.py), readable for every layer of a large model.

Reads lorakit's and PEFT's adapters (no base model needed). The spectrum tells how much of the rank an update
uses: a fast-decaying spectrum means a smaller r would do. An adapter whose tensors disagree with its config
(extra or missing tensors, non-float weights, a rank other than r) is refused with the first problem, as every
loader refuses it.

examples:
  lorakit inspect runs/alpaca
  lorakit inspect runs/alpaca --plot alpaca-spectrum.png
  lorakit inspect runs/alpaca --no-plot --json > alpaca.json
  lorakit inspect runs/alpaca --no-plot --suggest-rank --energy 0.95

--suggest-rank: per layer, the smallest rank whose top singular values keep a share (--energy, default 0.9) of
the update's energy (the sum of its squared singular values, ||s B A||_F^2); overall, the largest of those, the one
rank that keeps the share in every layer, with the factors' size at it. `lorakit resize` writes such an adapter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorakit.errors import AdapterFileError
from lorakit.resize import RankSuggestion, check_energy, suggest_ranks
from lorakit.spectrum import LayerInfo, layer_infos, plot_spectra, update_singular_values
from lorakit.variants.registry import config_flags, file_roles, with_hook

__all__ = ["LayerInfo", "add_arguments", "layer_infos", "plot_spectra", "run", "update_singular_values"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="adapter directory")
    parser.add_argument("--name", default="default", help="adapter name inside a multi-adapter directory")
    parser.add_argument("--plot", type=Path, default=Path("spectrum.png"), help="PNG to write (default spectrum.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    parser.add_argument("--suggest-rank", action="store_true",
                        help="suggest ranks per layer and overall from the singular values (see --energy)")
    parser.add_argument("--energy", type=float, metavar="SHARE",
                        help="share of each update's energy the suggested rank keeps, in (0, 1] (default 0.9; "
                             "implies --suggest-rank)")


def run(args: argparse.Namespace) -> int:
    from lorakit.io.adapter_consistency import first_problem
    from lorakit.io.checkpoint import CONFIG_NAME, read_adapter
    from lorakit.train.report import human_bytes

    file = read_adapter(args.adapter, args.name)
    config, extra, tensors, directory = file
    problem = first_problem(config, tensors)
    if problem:  # the table would describe an adapter that no loader accepts
        raise AdapterFileError(f"{directory} does not agree with its {CONFIG_NAME}: {problem}")
    infos = layer_infos(file)
    files = {f.name: f.stat().st_size for f in sorted(directory.iterdir()) if f.is_file()}
    size = sum(v for k, v in files.items() if k.startswith("adapter_"))
    total = sum(t.numel() for t in tensors.values())
    factors = ("lora_A", "lora_B", "lora_embedding_", *(r for r, v in file_roles().items() if v.plain_parts))
    others = sorted(k for k in tensors if not any(m in k for m in factors))
    suggestion = None
    if args.suggest_rank or args.energy is not None:
        energy = check_energy(0.9 if args.energy is None else args.energy)
        suggestion = suggest_ranks([(i.path, i.rank, i.params, i.singular_values) for i in infos], energy)
    plot = None if args.no_plot else plot_spectra(infos, args.plot, title=f"adapter {directory}")
    if args.json:
        print(json.dumps({
            "directory": str(directory), "config": config.to_dict(), "parameters": total, "size_bytes": size,
            "layers": [{"path": i.path, "rank": i.rank, "params": i.params, "scaling": i.scaling,
                        "singular_values": i.singular_values} for i in infos],
            "other_tensors": others, "plot": str(plot) if plot else None,
            **({"suggest_rank": _suggestion_json(suggestion, _bytes_per_param(tensors))} if suggestion else {}),
        }, indent=2, default=str))
        return 0
    targets = config.target_modules
    print(f"adapter {directory}")
    variant = with_hook(config, "describe")
    if variant is not None:
        print(f"  {variant.describe(config, sum(i.rank for i in infos))}")
    flags = " ".join([f"use_rslora={config.use_rslora}", *(f"{f}={getattr(config, f)}" for f in config_flags())])
    print(f"  r={config.r} lora_alpha={config.lora_alpha} {flags} "
          f"dropout={config.lora_dropout} bias={config.bias} task_type={config.task_type}")
    print(f"  target_modules={targets} modules_to_save={config.modules_to_save}")
    print(f"  base model: {config.base_model_name_or_path}; saved by lorakit {extra.get('lorakit_version', '-')}")
    print(f"  {len(infos)} adapted layers, {total:,} parameters, {human_bytes(size)} on disk "
          f"({', '.join(f'{k} {human_bytes(v)}' for k, v in files.items() if k.startswith('adapter_'))})")
    width = max([len(i.path) for i in infos] + [5])
    print(f"  {'layer':<{width}}  rank  params     scaling  |dW|_F     sigma_1    sigma_r/sigma_1")
    for i in infos:
        s = i.singular_values
        ratio = s[-1] / s[0] if s and s[0] > 0 else 0.0
        print(f"  {i.path:<{width}}  {i.rank:>4}  {i.params:>9,}  {i.scaling:>7.3g}  {i.norm:<9.4g}  "
              f"{(s[0] if s else 0):<9.4g}  {ratio:.3g}")
    if others:
        print(f"  other trained tensors (modules_to_save, biases): {len(others)}, e.g. {others[:3]}")
    if suggestion:
        _print_suggestion(suggestion, infos, _bytes_per_param(tensors), width, directory)
    if plot:
        print(f"  spectrum plot: {plot}")
    return 0


def _bytes_per_param(tensors: dict) -> int:
    """Bytes per factor entry (the first lora_A's dtype): sizes at other ranks are counted in it."""
    return next((t.element_size() for k, t in tensors.items() if "lora_A" in k or "lora_embedding_A" in k), 4)


def _suggestion_json(s: RankSuggestion, per_param: int) -> dict:
    return {
        "energy": s.energy, "rule": "overall = the largest per-layer rank: it keeps the share in every layer",
        "overall_rank": s.overall,
        "layers": [{"path": p, "rank": k, "energy_kept": s.kept[p]} for p, k in s.ranks.items()],
        "params_now": s.params_now, "params_at_overall_rank": s.params_at_overall,
        "params_at_layer_ranks": s.params_at_layer_ranks, "bytes_now": s.params_now * per_param,
        "bytes_at_overall_rank": s.params_at_overall * per_param,
        "bytes_at_layer_ranks": s.params_at_layer_ranks * per_param,
    }


def _print_suggestion(s: RankSuggestion, infos: list[LayerInfo], per_param: int, width: int,
                      directory: object) -> None:
    from lorakit.train.report import human_bytes

    print(f"  suggested ranks keeping {s.energy:g} of each update's energy (sum of squared singular values):")
    print(f"  {'layer':<{width}}  rank  suggested  energy kept")
    for i in infos:
        if i.path in s.ranks:
            print(f"  {i.path:<{width}}  {i.rank:>4}  {s.ranks[i.path]:>9}  {s.kept[i.path]:.4f}")
    print(f"  overall: rank {s.overall} (the largest per-layer rank, so every layer keeps the share)")
    print(f"  factors: {s.params_now:,} parameters, {human_bytes(s.params_now * per_param)} now; "
          f"{s.params_at_overall:,}, {human_bytes(s.params_at_overall * per_param)} at rank {s.overall}; "
          f"{s.params_at_layer_ranks:,}, {human_bytes(s.params_at_layer_ranks * per_param)} at the per-layer ranks")
    print(f"  write it: lorakit resize {directory} OUT --rank {s.overall}  (or --energy {s.energy:g}: per-layer ranks)")
