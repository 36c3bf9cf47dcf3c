"""DoRA (weight-decomposed LoRA): W' = m ⊙ (W + s·B·A) / ||W + s·B·A||, the norm per output row, detached.

A DoRA adapter is plain LoRA (A, B in the layer's dicts) plus a variant module in `layer.lora_variant[name]` that
computes the update, and a trainable magnitude m at `layer.lora_magnitude_vector[name].weight` (PEFT's place and
shape, so files move between tools). The forward never builds W + s·B·A: with W viewed as an (out, in) matrix,

    ||W_i + s·B_i·A||² = ||W_i||² + 2s·<W_i, B_i·A> + s²·||B_i·A||²
                       = ||W_i||² + 2s·Σ_k B_ik (W·Aᵀ)_ik + s²·(B·(A·Aᵀ)·Bᵀ)_ii

needs only W·Aᵀ (out, r) and A·Aᵀ (r, r); ||W_i||² is cached (W is frozen). The output reuses the base output:
y = m/n ⊙ (W·x + s·B·A·x) + bias. With dropout active in training the base product is recomputed on the
dropped input (PEFT's rule: y = base(x) + (m/n − 1) ⊙ W·drop(x) + m/n ⊙ s·B·A·drop(x)).
In eval mode the norm is cached until W, A, B or the scale change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError, MergeError, TargetError
from lorakit.layers.base import AdapterSpec, LoraLayer, adapter_compute_input
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from lorakit.variants.dora_autograd import DoraLinearUpdate, scale_rows

MAGNITUDE = "lora_magnitude_vector"
_ROW_CHUNK = 1024  # rows per chunk when squaring a 16-bit W in fp32 (bounds the temporary)


class DoraMagnitude(nn.Module):
    """The magnitude vector m of one adapter; a module with `.weight` so keys read `...<name>.weight` (PEFT)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


# -- the weight as an (out, in) matrix, with A (r, in) and B (out, r) -------------------------------------------
def as_matrices(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, A, B) as 2-D views with W·x = (out, in) @ (in,) and s·B@A in W's orientation (no copies)."""
    for klass in type(layer).__mro__:
        if klass in _MATRICES:
            return _MATRICES[klass](layer, name)
    raise TargetError(f"{type(layer).__name__} has no (out, in) matrix view; supported: {sorted(_type_names())}")


def _linear_matrices(layer: LoraLinear, name: str):
    w = layer.base_weight
    return (w.T if layer.fan_in_fan_out else w), layer.lora_A[name].weight, layer.lora_B[name].weight


def _embedding_matrices(layer: LoraEmbedding, name: str):
    a, b = layer.lora_weights(name)  # a: (r, num_embeddings), b: (dim, r); the "rows" are embedding dims
    return layer.base_weight.T, a, b


def _conv_matrices(layer: LoraConv, name: str):
    w = layer.base_weight  # (out, in, *k)
    a, b = layer.lora_weights(name)
    return w.reshape(w.shape[0], -1), a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


_MATRICES = {LoraLinear: _linear_matrices, LoraEmbedding: _embedding_matrices, LoraConv: _conv_matrices}


def _type_names() -> list[str]:
    return [k.__name__ for k in _MATRICES]


def row_sq_norms(w: torch.Tensor) -> torch.Tensor:
    """||W_i||² per row in fp32, (out,); 16-bit rows are upcast in chunks, never the whole matrix at once."""
    if w.dtype == torch.float32:
        return torch.einsum("ij,ij->i", w, w)
    return torch.cat([c.float().pow(2).sum(1) for c in w.split(_ROW_CHUNK)])


def lowrank_norm(w_sq: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """||W + s·B@A|| per row, (out,), from ||W||² (cached), W@Aᵀ (out, r) and A@Aᵀ (r, r): no (out, in) temporary.

    ||W_i + s·B_i A||² = ||W_i||² + Σ_k B_ik·(2s·(W Aᵀ)_ik + s²·(B A Aᵀ)_ik)."""
    wa = F.linear(a.to(w.dtype), w).T.to(b.dtype)  # W@Aᵀ (out, r), computed as A@Wᵀ (faster on CPU BLAS)
    mixed = torch.addmm(wa, b, a @ a.T, beta=2 * scale, alpha=scale * scale)  # (out, r)
    sq = torch.einsum("ir,ir->i", b, mixed).add_(w_sq.to(b.dtype))
    return sq.clamp_min_(0).sqrt_()


def _state(*tensors: torch.Tensor) -> tuple:
    """Identity + in-place version of tensors: changes whenever any of them is written or replaced. Inference
    tensors (made under torch.inference_mode) have no version counter: a fresh object, so nothing caches on them."""
    return tuple((t.data_ptr(), object() if t.is_inference() else t._version, tuple(t.shape), t.dtype)
                 for t in tensors)


# -- the variant modules ----------------------------------------------------------------------------------------
class DoraVariant(nn.Module):
    """Shared by all layer types: magnitude set-up, the (cached) norm, merge / unmerge. No parameters of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._w_sq: tuple[tuple, torch.Tensor] | None = None  # (state of W, ||W_i||²)
        self._norm: tuple[tuple, torch.Tensor] | None = None  # (state of W, A, B, scale; norm), eval mode only
        self._merged_factor: torch.Tensor | None = None  # m/n used by merge, so unmerge divides by the same

    def magnitude_shape(self, out_features: int) -> tuple[int, ...]:
        return (out_features,)

    def attach(self, layer: LoraLayer, name: str) -> None:
        """Create m = ||W + s·B@A|| (so a fresh DoRA adapter starts as its LoRA), registered like PEFT's."""
        if not hasattr(layer, MAGNITUDE):
            layer.lora_magnitude_vector = nn.ModuleDict()
        if MAGNITUDE not in layer.adapter_containers:  # so delete / trainability see it (instance-level)
            layer.adapter_containers = (*layer.adapter_containers, MAGNITUDE)
        w, a, _ = as_matrices(layer, name)
        shape = self.magnitude_shape(w.shape[0])
        if w.device.type == "meta":
            value = torch.empty(shape, dtype=a.dtype, device=w.device)
        else:
            with torch.no_grad():
                value = self.weight_norm(layer, name).reshape(shape).clone()
        layer.lora_magnitude_vector[name] = DoraMagnitude(value)

    def train(self, mode: bool = True) -> DoraVariant:
        self._norm = None
        return super().train(mode)

    def base_changed(self, layer: LoraLayer) -> None:
        """W was rewritten where the cache keys cannot see it (a quantized base requantized; layers/quantized.py)."""
        self._w_sq = None
        self._norm = None

    def weight_norm(self, layer: LoraLayer, name: str) -> torch.Tensor:
        """||W + s·B@A|| per output row, (out,), detached (the paper treats it as a constant)."""
        w, a, b = as_matrices(layer, name)
        if not w.dtype.is_floating_point:
            raise ConfigError(f"DoRA needs a floating-point base weight, this layer's is {w.dtype} (quantized base?)")
        scale = layer.scaling[name]
        key = (_state(w, a, b), scale)
        if self._norm is not None and self._norm[0] == key:
            return self._norm[1]
        with torch.no_grad():
            w_key = _state(w)
            if self._w_sq is None or self._w_sq[0] != w_key:
                self._w_sq = (w_key, row_sq_norms(w))
            norm = lowrank_norm(self._w_sq[1], w, a.detach(), b.detach(), scale)
        if not self.training:
            self._norm = (key, norm)
        return norm

    def factor(self, layer: LoraLayer, name: str) -> torch.Tensor:
        """m / ||W + s·B@A||, (out,): the gradient reaches m only."""
        magnitude = layer.lora_magnitude_vector[name].weight
        return magnitude.reshape(-1) / self.weight_norm(layer, name)

    def fold(self, layer: LoraLayer, name: str) -> tuple[torch.Tensor, bool]:
        """For mixed-adapter batches (lorakit.mixed): the row factor m/n of the update, which also scales W·x."""
        return self.factor(layer, name), True

    # merge: W <- m/n ⊙ (W + s·B@A) row-wise; unmerge divides by the same factor and subtracts the update
    def merge(self, layer: LoraLayer, name: str, safe_merge: bool) -> None:
        w, a, b = as_matrices(layer, name)
        with torch.no_grad():
            factor = self.factor(layer, name).detach().float()
            merged = (w.float() + (b @ a).float() * layer.scaling[name]) * factor[:, None]
            if safe_merge and not torch.isfinite(merged).all():
                raise MergeError(
                    f"merging DoRA adapter {name!r} would write NaN/Inf into the base weights; the model was left "
                    "unchanged"
                )
            w.copy_(merged.to(w.dtype))
        self._merged_factor = factor

    def unmerge(self, layer: LoraLayer, name: str) -> None:
        w, a, b = as_matrices(layer, name)
        factor = self._merged_factor if self._merged_factor is not None else self.factor(layer, name).float()
        with torch.no_grad():
            restored = w.float() / factor[:, None] - (b @ a).float() * layer.scaling[name]
            w.copy_(restored.to(w.dtype))
        self._merged_factor = None

    def base_is_pure(self, layer: LoraLayer, name: str) -> bool:
        """y holds the base output alone (no other adapter added yet): the forward adds adapters in `_live` order."""
        return layer._live[:1] == (name,)


class DoraLinear(DoraVariant):
    """nn.Linear / Conv1D: y = m/n ⊙ (W·x + s·B·A·x) + bias."""

    def forward(self, layer: LoraLinear, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        scale, factor = layer.scaling[name], self.factor(layer, name)
        dropout = layer.lora_dropout[name]
        xa = adapter_compute_input(x, lora_a.weight)
        bias = layer.base_layer.bias
        if layer.training and not isinstance(dropout, nn.Identity):
            xd = dropout(xa)
            w = layer.base_weight.T if layer.fan_in_fan_out else layer.base_weight
            base_d = F.linear(xd, w.to(xd.dtype))
            update = (factor - 1) * base_d + factor * (lora_b(lora_a(xd)) * scale)
            return y + update.to(y.dtype)
        if not self.base_is_pure(layer, name):  # other adapters already in y: recompute the base product
            w = layer.base_weight.T if layer.fan_in_fan_out else layer.base_weight
            base = F.linear(xa, w.to(xa.dtype))
            update = (factor - 1) * base + factor * (lora_b(lora_a(xa)) * scale)
            return y + update.to(y.dtype)
        if y.dtype == lora_b.weight.dtype and y.is_contiguous():  # one autograd node, y reused in place
            b = None if bias is None else bias.to(y.dtype)
            return DoraLinearUpdate.apply(y, xa, lora_a.weight, lora_b.weight, factor, b, scale)
        h = F.linear(xa, lora_a.weight)  # (..., r); 16-bit base: the update runs in the adapter's fp32
        y2 = y.reshape(-1, y.shape[-1]).to(lora_b.weight.dtype)  # (tokens, out), with the base bias
        pre = torch.addmm(y2, h.reshape(-1, h.shape[-1]), lora_b.weight.T, alpha=scale)  # W·x + b + s·B·A·x
        out = scale_rows(pre, factor, None if bias is None else bias.to(pre.dtype))
        return out.view(y.shape).to(y.dtype)


class DoraEmbedding(DoraVariant):
    """nn.Embedding: the rows are embedding dims, normed over the vocabulary (PEFT's convention)."""

    def forward(self, layer: LoraEmbedding, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = layer.lora_weights(name)
        factor = self.factor(layer, name)
        update = layer._lookup(x, a.T) @ b.T * layer.scaling[name]  # (..., dim)
        if self.base_is_pure(layer, name):
            return scale_rows(update.add_(y.to(update.dtype)), factor, None).to(y.dtype)
        base = layer._lookup(x, layer.base_weight).to(update.dtype)
        return y + ((factor - 1) * base + factor * update).to(y.dtype)


class DoraConv(DoraVariant):
    """Conv1d/2d/3d: the rows are output channels, normed over (in, *kernel); m is (1, out, 1, ...) like PEFT."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims

    def magnitude_shape(self, out_features: int) -> tuple[int, ...]:
        return (1, out_features) + (1,) * self.dims

    def forward(self, layer: LoraConv, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        channel = (-1,) + (1,) * self.dims  # broadcast over (batch, out, *spatial)
        factor = self.factor(layer, name).view(channel)
        dropout = layer.lora_dropout[name]
        xa = adapter_compute_input(x, lora_a.weight)
        base_layer = layer.base_layer
        if (layer.training and not isinstance(dropout, nn.Identity)) or not self.base_is_pure(layer, name):
            xd = dropout(xa)
            base = _conv_without_bias(base_layer, xd)
            update = (factor - 1) * base + factor * (lora_b(lora_a(xd)) * layer.scaling[name])
            return y + update.to(y.dtype)
        pre = y.to(xa.dtype) + lora_b(lora_a(xa)) * layer.scaling[name]  # W*x + b + s·B·A·x
        bias = None if base_layer.bias is None else base_layer.bias.view(channel).to(pre.dtype)
        return scale_rows(pre, factor, bias).to(y.dtype)


def _conv_without_bias(base: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    return base._conv_forward(x, base.weight.to(x.dtype), None)


# -- factory (the registry entry's make_layer: variants/builtin.py) ---------------------------------------
_VARIANTS = {
    LoraConv: lambda layer: DoraConv(layer.base_weight.dim() - 2),
    LoraEmbedding: lambda layer: DoraEmbedding(),
    LoraLinear: lambda layer: DoraLinear(),
}


def make_dora(layer: LoraLayer, spec: AdapterSpec) -> DoraVariant:
    if spec.lora_bias:
        raise ConfigError("use_dora=True with lora_bias=True is not supported (PEFT refuses it too); drop one")
    if isinstance(layer, LoraConv) and layer.base_layer.groups > 1:
        raise ConfigError(
            f"use_dora=True on a grouped convolution (groups={layer.base_layer.groups}) is not supported: its "
            "LoRA update cannot be written into the grouped weight, so its norm is undefined"
        )
    build = next((_VARIANTS[k] for k in type(layer).__mro__ if k in _VARIANTS), None)
    if build is None:
        raise TargetError(f"use_dora=True is not supported on {type(layer).__name__}; DoRA works on {_type_names()}")
    return build(layer)
