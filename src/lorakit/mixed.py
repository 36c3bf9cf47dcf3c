"""Mixed-adapter batches: each row of a batch runs with its own adapter, none, or a weighted sum of adapters.

    with lorakit.mixed_adapters(model, ["a", "b", None, [("a", 0.5), ("c", 0.5)]]):
        logits = model(ids).logits            # row 0: adapter a, row 1: b, row 2: the base, row 3: 0.5 a + 0.5 c
        out = model.generate(ids, max_new_tokens=20)

Per row i of a layer, with the row's entries (adapter k, weight w_k) and the base output y_i = W x_i + bias:

    y_i + sum_k w_k [ (h_k - 1) (y_i - bias) + g_k s_k B_k A_k x_i ]

g_k (out,): the row factor of a variant's update, from its module's `fold(layer, name) -> (g, scales_base)`
(1 for plain LoRA); h_k = g_k when the factor also scales the base output (e.g. m_k / ||W + s_k B_k A_k||), else 1.

i.e. the weighted sum of each adapter's own contribution, never a merged weight. When a plan starts, each layer's
row weights are stacked once (`RowWeights`: the entries of a row side by side, zero-padded to the largest rank);
then every forward is two batched matmuls over the rows, `torch.bmm(x, A_rows^T)` and `baddbmm(y, h, B_rows^T)`,
whatever the number of distinct adapters. When all rows use the same adapter the "rows" are one view of its own
tensors (no copy: the plain forward's cost). Batches that `generate` expands (num_beams, num_return_sequences)
repeat each row in place, which the layout (rows, copies * tokens, features) absorbs. Inference only.
The server's adapter cache (lorakit.serve.cache) feeds the same plan from preallocated slot buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import adapter_configs
from lorakit.errors import AdapterError
from lorakit.io.keys import to_file_key
from lorakit.layers.base import LoraLayer
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from lorakit.layers.saved_module import TrainableCopy

RowSpec = str | None | Sequence[tuple[str, float]] | dict[str, float]
Entries = list[list[tuple[str, float]]]  # per row: (adapter name, weight) pairs
ROW_CACHE_BYTES = 512 << 20  # row weights a plan may keep (beyond it, a layer's are rebuilt every forward)


@dataclass
class RowWeights:
    """One layer's adapter weights per row, a row's K entries side by side (each zero-padded to rank R):

    a: (n, K*R, in), or (n, vocab, K*R) for an embedding (a lookup table);  b: (n, out, K*R)
    scale: multiplies h = x A^T per column, (n, 1, K*R) or a number: weight * scaling of each entry
    gain: (n, 1, out) sum_k w_k (h_k - 1) (a variant's base factor),
    shift: (n, 1, out) sum_k w_k s_k g_k lora_bias_k, or None.
    n is the number of rows, or 1 when all rows are alike (then a and b may be views of the adapter's tensors)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: torch.Tensor | float
    gain: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        tensors = [self.a, self.b, self.scale, self.gain, self.shift]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


WeightsFor = Callable[[LoraLayer, "MixedPlan"], "RowWeights | None"]


class MixedPlan:
    """Rows -> adapter entries, and the forward every LoraLayer calls while the plan is set on it.

    `weights_for(layer, plan)` builds a layer's RowWeights (None: no adapter of the plan on that layer); the plan
    keeps them while it lives, within `row_cache_bytes`."""

    def __init__(self, entries: Entries, weights_for: WeightsFor, row_cache_bytes: int = ROW_CACHE_BYTES,
                 trainable: Callable[[], list[str]] | None = None) -> None:
        if not entries:
            raise AdapterError("mixed_adapters needs at least one row")
        self.entries = [list(row) for row in entries]
        self.rows = len(entries)
        self.uniform = all(row == self.entries[0] for row in self.entries)  # every row alike: one shared "row"
        self.used = any(self.entries)
        self.weights_for, self._trainable = weights_for, trainable  # names of adapters whose tensors need grads
        self._budget = row_cache_bytes
        self._cache: dict[int, RowWeights | None] = {}

    def apply(self, layer: LoraLayer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._trainable is not None and torch.is_grad_enabled():
            trainable, self._trainable = self._trainable(), None  # checked once
            if trainable:
                raise AdapterError(f"mixed-adapter batches are for inference and adapter {trainable[0]!r} is "
                                   "trainable: run under torch.no_grad() / torch.inference_mode(), or load it with "
                                   "trainable=False")
        if x.shape[0] % self.rows:
            raise AdapterError(f"mixed_adapters was given {self.rows} row adapters but the batch has {x.shape[0]} "
                               "rows; pass one entry per row (generate's num_beams / num_return_sequences copies "
                               "are handled)")
        if not self.used:
            return y
        kernel = next((KERNELS[k] for k in type(layer).__mro__ if k in KERNELS), None)
        if kernel is None:
            raise AdapterError(f"mixed-adapter batches do not support {type(layer).__name__} layers")
        return kernel(self, layer, x, y)

    def row_weights(self, layer: LoraLayer) -> RowWeights | None:
        key = id(layer)
        if key in self._cache:
            return self._cache[key]
        weights = self.weights_for(layer, self)
        size = 0 if weights is None else weights.nbytes
        if size <= self._budget:
            self._budget -= size
            self._cache[key] = weights
        return weights


# -- kernels per layer type ---------------------------------------------------------------------------------------
def _linear(plan: MixedPlan, layer: LoraLinear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rw = plan.row_weights(layer)
    if rw is None:
        return y
    n = rw.a.shape[0]
    xa = x if x.dtype == rw.a.dtype else x.to(rw.a.dtype)
    h = torch.bmm(xa.reshape(n, -1, xa.shape[-1]), rw.a.transpose(1, 2))  # (n, copies * tokens, K * R)
    return _finish(layer, y, h, rw, n)


def _embedding(plan: MixedPlan, layer: LoraEmbedding, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rw = plan.row_weights(layer)
    if rw is None:
        return y
    n, vocab = rw.a.shape[:2]
    ids = x.reshape(n, -1)  # (n, copies * tokens)
    table = rw.a[0] if n == 1 else rw.a.reshape(n * vocab, -1)  # row i's table starts at i * vocab
    offsets = 0 if n == 1 else torch.arange(n, device=ids.device)[:, None] * vocab
    return _finish(layer, y, F.embedding(ids + offsets, table), rw, n)


def _finish(layer: LoraLayer, y: torch.Tensor, h: torch.Tensor, rw: RowWeights, n: int) -> torch.Tensor:
    """y + gain (y - bias) + (scale * h) @ B_rows^T + shift, all rows in one batched matmul."""
    grad = torch.is_grad_enabled()
    h = h * rw.scale if grad else h.mul_(rw.scale)
    out = y.shape[-1]
    in_place = y.dtype == h.dtype and not grad and y.is_contiguous()
    y3 = y.view(n, -1, out) if in_place else y.reshape(n, -1, out).to(h.dtype)
    if rw.gain is not None:
        bias = getattr(layer.base_layer, "bias", None)
        y3 = y3 + rw.gain * (y3 if bias is None else y3 - bias.to(y3.dtype))
    y3 = y3.baddbmm_(h, rw.b.transpose(1, 2)) if in_place else y3.baddbmm(h, rw.b.transpose(1, 2))
    if rw.shift is not None:
        y3 = y3 + rw.shift
    return y3.reshape(y.shape).to(y.dtype)


def _conv(plan: MixedPlan, layer: LoraConv, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Convolutions run one adapter at a time over the rows that use it (a conv per distinct adapter)."""
    copies = x.shape[0] // plan.rows
    y = y.clone()
    for name in dict.fromkeys(n for row in plan.entries for n, _ in row if n in layer.r):
        if name in layer.lora_variant:
            raise AdapterError(f"adapter {name!r}: mixed-adapter batches do not support LoRA variants on convolutions")
        weight = torch.tensor([sum(w for n, w in row if n == name) for row in plan.entries], device=x.device)
        weight = weight.repeat_interleave(copies)  # (batch,): this adapter's weight in each row
        idx = weight.nonzero().flatten()
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        update = lora_b(lora_a(x.index_select(0, idx).to(lora_a.weight.dtype))) * layer.scaling[name]
        scale = weight.index_select(0, idx).to(update.dtype).view(-1, *([1] * (update.dim() - 1)))
        y.index_add_(0, idx, (update * scale).to(y.dtype))
    return y


KERNELS: dict[type, Callable] = {LoraLinear: _linear, LoraEmbedding: _embedding, LoraConv: _conv}


# -- row weights from the adapters living in the model -------------------------------------------------------------
def model_row_weights(layer: LoraLayer, plan: MixedPlan) -> RowWeights | None:
    """Stack each row's entries from the layer's own adapter tensors (one copy; none when all rows are alike)."""
    if isinstance(layer, LoraConv):
        return None
    rows = [[(n, w) for n, w in row if n in layer.r] for row in (plan.entries[:1] if plan.uniform else plan.entries)]
    if not any(rows):
        return None
    width = max(len(row) for row in rows)
    rank = max(layer.r[n] for row in rows for n, _ in row)
    embedding = isinstance(layer, LoraEmbedding)
    parts = [[_entry(layer, *row[k]) if k < len(row) else None for row in rows] for k in range(width)]
    some = next(e for column in parts for e in column if e is not None)
    zeros = (some[0].new_zeros(some[0].shape[0], rank) if embedding else some[0].new_zeros(rank, some[0].shape[1]),
             some[1].new_zeros(some[1].shape[0], rank))
    a_cols, b_cols, scales = [], [], []
    for column in parts:
        a_cols.append(_stack([zeros[0] if e is None else e[0] for e in column], rank, 1 if embedding else 0))
        b_cols.append(_stack([zeros[1] if e is None else e[1] for e in column], rank, 1))
        scales.append(torch.tensor([0.0 if e is None else e[2] for e in column], dtype=some[1].dtype))
    a = a_cols[0] if width == 1 else torch.cat(a_cols, dim=2 if embedding else 1)  # (cat copies even one tensor)
    b = b_cols[0] if width == 1 else torch.cat(b_cols, dim=2)
    scale = torch.stack(scales, 1).repeat_interleave(rank, 1)[:, None, :].to(b.device)  # (n, 1, K * R)
    if len(rows) == 1 and width == 1:
        scale = float(scale.flatten()[0])
    per_row = list(zip(*parts, strict=True))  # each row's entries
    gain = _row_sum([[e[3] for e in row if e is not None and e[3] is not None] for row in per_row])
    shift = _row_sum([[e[4] for e in row if e is not None and e[4] is not None] for row in per_row])
    return RowWeights(a, b, scale, gain, shift)


def _entry(layer: LoraLayer, name: str, weight: float) -> tuple:
    """(a in lookup layout, b with the variant's g folded in, weight * scaling, w (h - 1) or None, w s g bias or None).
    """
    a, b = (t.detach() for t in layer.lora_weights(name))
    if isinstance(layer, LoraEmbedding):
        a = a.T  # (vocab, r): looked up by token id
    scale = weight * layer.scaling[name]
    factor, scales_base = None, False
    if name in layer.lora_variant:
        variant = layer.lora_variant[name]
        if not callable(getattr(variant, "fold", None)):
            raise AdapterError(f"adapter {name!r} uses {type(variant).__name__}, which mixed-adapter batches do not "
                               "support (they support LoRA and the variants whose module has fold(layer, name))")
        factor, scales_base = variant.fold(layer, name)  # (out,) row factor of the update; does it scale W x too?
        factor = factor.detach().reshape(-1).to(b.dtype)
    bias = layer.lora_B[name].bias.detach() if layer.lora_bias.get(name) else None
    b, gain, shift = row_fold(b, factor, scales_base, bias, scale)
    return a, b, scale, None if gain is None else weight * gain, shift


def row_fold(b: torch.Tensor, factor: torch.Tensor | None, scales_base: bool, bias: torch.Tensor | None,
             bias_scale: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """An adapter's update as plain factors: (B with the variant's row factor g folded in, g - 1 where g also
    scales the base output, bias_scale · g · lora_bias). Shared by mixed batches and the server's cache."""
    if factor is None:
        return b, None, None if bias is None else bias * bias_scale
    shift = None if bias is None else bias * (bias_scale * factor)
    return b * factor[:, None], factor - 1 if scales_base else None, shift


def _stack(tensors: list[torch.Tensor], rank: int, dim: int) -> torch.Tensor:
    """Stack along a new row axis, zero-padding `dim` to `rank` (views of equal-rank tensors are copied once)."""
    if len(tensors) == 1 and tensors[0].shape[dim] == rank:
        return tensors[0].unsqueeze(0)  # a view: all rows alike
    padded = [t if t.shape[dim] == rank else F.pad(t, (0, rank - t.shape[1]) if dim == 1 else
                                                   (0, 0, 0, rank - t.shape[0])) for t in tensors]
    return torch.stack(padded)


def _row_sum(per_row: list[list[torch.Tensor]]) -> torch.Tensor | None:
    """(n, 1, out) sums of per-row vectors; None if no row has any."""
    if not any(per_row):
        return None
    out = next(t for row in per_row for t in row)
    return torch.stack([sum(row, torch.zeros_like(out)) for row in per_row])[:, None, :]


# -- the library entry point ----------------------------------------------------------------------------------------
def parse_rows(row_adapters: Sequence[RowSpec], known: Sequence[str]) -> Entries:
    """Row specs -> per row (name, weight) pairs (a name twice in a row: weights add)."""
    if isinstance(row_adapters, (str, bytes)) or not isinstance(row_adapters, Sequence):
        raise AdapterError(f"row_adapters must be a list with one entry per row, got {row_adapters!r}")
    entries: Entries = []
    for i, spec in enumerate(row_adapters):
        if spec is None:
            pairs = []
        elif isinstance(spec, str):
            pairs = [(spec, 1.0)]
        else:
            pairs = list(spec.items()) if isinstance(spec, dict) else list(spec)
        row: dict[str, float] = {}
        for item in pairs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
                raise AdapterError(f"row {i}: expected an adapter name, None, or a list of (name, weight); got "
                                   f"{spec!r}")
            name, weight = item
            if name not in known:
                raise AdapterError(f"row {i}: no adapter named {name!r}; the model has {sorted(known) or 'none'}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise AdapterError(f"row {i}: weight of adapter {name!r} must be a finite number, got {weight!r}")
            row[name] = row.get(name, 0.0) + float(weight)
        entries.append(list(row.items()))
    return entries


@contextmanager
def use_plan(layers: Sequence[LoraLayer], plan: MixedPlan) -> Iterator[MixedPlan]:
    """Set `plan` on the layers for the duration of the block (restoring what was there: plans nest)."""
    previous = [layer.mixed_rows for layer in layers]
    for layer in layers:
        layer.mixed_rows = plan
    try:
        yield plan
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.mixed_rows = old


@contextmanager
def mixed_adapters(model: nn.Module, row_adapters: Sequence[RowSpec],
                   row_cache_bytes: int = ROW_CACHE_BYTES) -> Iterator[MixedPlan]:
    """Inside the block, row i of every batch runs with `row_adapters[i]`: an adapter name, None (the base model),
    or a list of (name, weight) pairs / a {name: weight} dict (the weighted sum of those adapters' outputs). Works
    around `model(...)` and `model.generate(...)`; the model's active adapters are ignored inside. Inference only.

    The stacked row weights of the last block stay with the model, and the next block with the same rows reuses
    them unless an adapter tensor or scale changed in between; `clear_plan_cache(model)` frees them."""
    entries = parse_rows(row_adapters, list(adapter_configs(model)))
    names = list(dict.fromkeys(n for row in entries for n, _ in row))
    modules = list(model.named_modules())  # one walk over the model: entering stays cheap next to a forward
    layers = [m for _, m in modules if isinstance(m, LoraLayer)]
    _check_usable([(p, m) for p, m in modules if isinstance(m, TrainableCopy)], layers, names)

    def trainable() -> list[str]:  # asked only if a forward runs with gradients enabled
        keys = [f"{p}.{k}" if p else k for p, m in modules for k, t in m.named_parameters(recurse=False)
                if t.requires_grad]
        return [n for n in names if any(to_file_key(key, n) for key in keys)]

    plan = _reusable_plan(model, layers, entries, names, row_cache_bytes)
    plan._trainable = trainable
    with use_plan(layers, plan):
        yield plan


PLAN_ATTR = "_lorakit_mixed_plan"  # in model.__dict__: (state, plan) of the last mixed_adapters block


def _reusable_plan(model: nn.Module, layers: Sequence[LoraLayer], entries: Entries, names: Sequence[str],
                   row_cache_bytes: int) -> MixedPlan:
    """The previous block's plan when the rows are the same and no adapter tensor changed since (a loop of
    `with mixed_adapters(model, rows): model(...)` then stacks the row weights once, not every call); else new."""
    tensors = _adapter_state(layers, names)
    state = (row_cache_bytes, [list(row) for row in entries], tensors)
    previous = model.__dict__.get(PLAN_ATTR)
    if tensors is not None and previous is not None and previous[0] == state:
        return previous[1]
    plan = MixedPlan(entries, model_row_weights, row_cache_bytes)
    if tensors is None:
        model.__dict__.pop(PLAN_ATTR, None)
    else:
        model.__dict__[PLAN_ATTR] = (state, plan)
    return plan


def _adapter_state(layers: Sequence[LoraLayer], names: Sequence[str]) -> tuple | None:
    """Everything the row weights are made of: each layer's tensors (identity and in-place version, so an
    optimizer step or a load into them shows) and the adapters' scales. None when it cannot be known."""
    state = []
    for layer in layers:
        used = [n for n in names if n in layer.r]
        if not used:
            continue
        state.append((id(layer), tuple((n, layer.scaling[n], n in layer.lora_variant) for n in used)))
        for tensor in layer.parameters():
            if tensor.is_inference():  # no version counter: changes cannot be seen, so never reuse
                return None
            state.append((tensor.data_ptr(), tensor._version))
    return tuple(state)


def clear_plan_cache(model: nn.Module) -> None:
    """Drop the row weights the last mixed_adapters block kept for reuse (they are rebuilt when next needed)."""
    model.__dict__.pop(PLAN_ATTR, None)


def _check_usable(copies: Sequence[tuple[str, TrainableCopy]], layers: Sequence[LoraLayer],
                  names: Sequence[str]) -> None:
    merged = next((layer.merged_adapters[0] for layer in layers if layer.merged_adapters), None)
    if merged is not None:
        raise AdapterError(f"adapter {merged!r} is merged into the base weights; unmerge_adapter(model) before "
                           "running a mixed-adapter batch")
    for path, wrapper in copies:
        shared = [n for n in names if n in wrapper.adapter_names]
        if shared:
            raise AdapterError(f"adapter {shared[0]!r} has a modules_to_save copy of {path}, which cannot differ per "
                               "row; mixed-adapter batches support LoRA layers only")
    for layer in layers:
        for name in names:
            dropout = layer.lora_dropout[name] if name in layer.lora_dropout else None
            if isinstance(dropout, nn.Dropout) and dropout.p > 0 and dropout.training:
                raise AdapterError(f"adapter {name!r} has lora_dropout={dropout.p} and the model is in training "
                                   "mode; call model.eval() before a mixed-adapter batch")
