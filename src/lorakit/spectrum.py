"""The singular values of each adapted layer's update scaling * B @ A, and a plot of them that stays readable for
a whole LLM (a 32-layer model with every linear layer adapted has 224 of them).

The plot has one panel per module type (q_proj, k_proj, ..., down_proj), each layer a line coloured by its depth,
integer ticks, one y scale for all panels: how much of the rank each layer type uses, and how that changes with
depth, at a glance. `lorakit inspect` writes it, and so does `lorakit train` next to a LoRA adapter.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorakit.io.adapter_file import AdapterFile
from lorakit.io.atomic import replace_files


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


_NUMBER = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")


def module_type(path: str) -> str:
    """What a layer is within its block: the path after its last number (model.layers.3.self_attn.q_proj ->
    self_attn.q_proj; BERT's encoder.layer.3.attention.output.dense -> attention.output.dense, not just "dense",
    which four different BERT layers end with); a path with no number keeps its last two parts (bert.pooler.dense
    -> pooler.dense)."""
    parts = path.split(".")
    numbered = [i for i, part in enumerate(parts) if part.isdigit()]
    tail = parts[numbered[-1] + 1:] if numbered else parts[-2:]
    return ".".join(tail) or path


def short_names(types: list[str]) -> dict[str, str]:
    """Each module type by its last part where no other type ends the same way (q_proj), else in full
    (attention.output.dense beside output.dense)."""
    last = [t.rsplit(".", 1)[-1] for t in types]
    return {t: name if last.count(name) == 1 else t for t, name in zip(types, last, strict=True)}


def depth_key(path: str) -> tuple[int, ...]:
    """The numbers in a layer's path, outermost first (model.layers.12.mlp.up_proj -> (12,)): sorts layers by
    depth, 2 before 10, which the file's string order does not."""
    return tuple(int(n) for n in _NUMBER.findall(path))


def group_by_module_type(infos: list[LayerInfo]) -> dict[str, list[LayerInfo]]:
    """Layers by module type (types in order of first appearance by depth, named by short_names), each list
    sorted by depth."""
    groups: dict[str, list[LayerInfo]] = {}
    for info in sorted(infos, key=lambda i: (depth_key(i.path), i.path)):
        groups.setdefault(module_type(info.path), []).append(info)
    names = short_names(list(groups))
    return {names[kind]: layers for kind, layers in groups.items()}


def depth_of(path: str) -> int | None:
    """The block number of a layer (the first number in its path), or None for a layer outside numbered blocks."""
    key = depth_key(path)
    return key[0] if key else None


def plot_spectra(infos: list[LayerInfo], path: Path, title: str | None = None) -> Path | None:
    """One panel per module type, each layer's spectrum a line coloured by depth, one shared log y scale.
    Written atomically (a full disk keeps the old plot). None without matplotlib or without layers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    groups = group_by_module_type([i for i in infos if i.singular_values])
    if not groups:
        return None
    ordered = sorted({depth_key(i.path) for g in groups.values() for i in g})
    numbered = all(depth_of(i.path) is not None for g in groups.values() for i in g)

    def colour_index(info: LayerInfo) -> int:  # the block number, or the order of depth when paths have none
        return depth_of(info.path) if numbered else ordered.index(depth_key(info.path))

    indices = [colour_index(i) for g in groups.values() for i in g]
    norm = Normalize(vmin=min(indices), vmax=max(max(indices), min(indices) + 1))
    cmap = plt.get_cmap("viridis")
    top = max(v for g in groups.values() for i in g for v in i.singular_values)
    floor = top * 1e-6 if top > 0 else 1e-12  # zeros would stretch the shared log scale down to nothing
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.2, 2.8 * rows + 0.8), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, (name, layers) in zip(axes.flat, groups.items(), strict=False):
        for info in layers:
            values = [max(v, floor) for v in info.singular_values]
            ax.semilogy(range(1, len(values) + 1), values, "-", marker="o", ms=2, lw=1,
                        color=cmap(norm(colour_index(info))))
        ax.set_title(f"{name} ({len(layers)} layer{'s' if len(layers) != 1 else ''})", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("singular value index", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("singular value", fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.9)
    bar.set_label("layer" if numbered else "layer (order of depth)", fontsize=8)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    count = sum(len(g) for g in groups.values())
    heading = f"singular values of scaling * B @ A by module type ({count} layers)"
    fig.suptitle(f"{title}\n{heading}" if title else heading, fontsize=10)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_files(path.parent, {path.name: png.getvalue()})
    return path
