"""Show an adapter: its config, each adapted layer's rank, parameter count and the singular values of its update
scaling * B @ A, the size on disk, and a PNG with one singular-value spectrum per layer.

Reads lorakit's and PEFT's adapters (no base model needed). The spectrum tells how much of the rank an update
uses: a fast-decaying spectrum means a smaller r would do. An adapter whose tensors disagree with its config
(extra or missing tensors, non-float weights, a rank other than r) is refused with the first problem, as every
loader refuses it.

examples:
  lorakit inspect runs/alpaca
  lorakit inspect runs/alpaca --plot alpaca-spectrum.png
  lorakit inspect runs/alpaca --no-plot --json > alpaca.json
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorakit.errors import AdapterFileError
from lorakit.io.adapter_file import AdapterFile
from lorakit.io.atomic import replace_files
from lorakit.variants.registry import config_flags, file_roles, with_hook


@dataclass
class LayerInfo:
    path: str
    rank: int
    params: int
    scaling: float
    singular_values: list[float] = field(default_factory=list)

    @property
    def norm(self) -> float:  # Frobenius norm of the update = sqrt(sum of squared singular values)
        return sum(s * s for s in self.singular_values) ** 0.5


def update_singular_values(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of scaling * B @ A in O((in + out) r^2): B = Qb Rb and A^T = Qa Ra give
    B A = Qb (Rb Ra^T) Qa^T, so they are those of the small r x r matrix Rb Ra^T."""
    a2 = a.detach().double().reshape(a.shape[0], -1)  # (r, in); conv kernels flattened
    b2 = b.detach().double().reshape(b.shape[0], -1)  # (out, r), or (out, r / groups) on a grouped conv
    if b2.shape[1] != a2.shape[0]:  # output group j reads rank channels j: B is block-diagonal as a matrix
        b2 = torch.block_diag(*b2.chunk(a2.shape[0] // b2.shape[1], dim=0))  # (out, r)
    _, r_b = torch.linalg.qr(b2)  # (r, r)
    _, r_a = torch.linalg.qr(a2.T)  # (r, r)
    return torch.linalg.svdvals(r_b @ r_a.T) * abs(scaling)


def layer_infos(file: AdapterFile) -> list[LayerInfo]:
    """One entry per adapted layer, from its factors (a variant's own as plain A and B: AdapterFile.plain_layers)."""
    layers = file.plain_layers()
    infos = []
    for path in sorted(layers, key=lambda p: p + ".lora"):  # the order of the layers' file keys
        parts = layers[path]
        a = parts.get("lora_A.weight", parts.get("lora_embedding_A"))
        b = parts.get("lora_B.weight", parts.get("lora_embedding_B"))
        if a is None or b is None:
            continue
        rank = a.shape[0]  # A is (r, in) for linear, (r, num_embeddings) for embedding, (r, in, *k) for conv
        scaling = file.config.scaling_for(path)
        values = update_singular_values(a, b, scaling).tolist() if rank else []  # a variant may prune to rank 0
        infos.append(LayerInfo(path, rank, a.numel() + b.numel(), scaling, values))
    return infos


def _short(path: str, limit: int = 40) -> str:
    """Drop leading path segments until the name fits a subplot title."""
    while len(path) > limit and "." in path:
        path = path.split(".", 1)[1]
    return path


def plot_spectra(infos: list[LayerInfo], path: Path, limit: int = 48) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = infos[:limit]
    cols = min(4, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, info in zip(axes.flat, shown, strict=False):
        values = [max(v, 1e-12) for v in info.singular_values]
        ax.semilogy(range(1, len(values) + 1), values, "o-", ms=3)
        ax.set_title(_short(info.path), fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    title = "singular values of scaling * B @ A per layer"
    fig.suptitle(title + (f" (first {limit} of {len(infos)} layers)" if len(infos) > limit else ""), fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_files(path.parent, {path.name: png.getvalue()})  # a full disk keeps the old plot, leaves no half file
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="adapter directory")
    parser.add_argument("--name", default="default", help="adapter name inside a multi-adapter directory")
    parser.add_argument("--plot", type=Path, default=Path("spectrum.png"), help="PNG to write (default spectrum.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")


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
    plot = None if args.no_plot else plot_spectra(infos, args.plot)
    if args.json:
        print(json.dumps({
            "directory": str(directory), "config": config.to_dict(), "parameters": total, "size_bytes": size,
            "layers": [{"path": i.path, "rank": i.rank, "params": i.params, "scaling": i.scaling,
                        "singular_values": i.singular_values} for i in infos],
            "other_tensors": others, "plot": str(plot) if plot else None,
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
    if plot:
        print(f"  spectrum plot: {plot}")
    return 0
