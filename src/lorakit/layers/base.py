"""Adapter bookkeeping shared by every LoRA layer type: named adapters, active / merged / disabled state.

No LoRA math lives here: each layer type defines how its weights look (`create_weights`, `reset_weights`),
its `delta_weight` in the base weight's layout, and its forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lorakit.errors import AdapterError, MergeError
from lorakit.layers.lowrank import lora_scaling
from lorakit.variants.registry import get_variant

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AdapterSpec:
    """What one layer needs to build one adapter (resolved per module from a LoraConfig)."""

    r: int
    lora_alpha: float
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    lora_bias: bool = False
    variant: str | None = None  # a registered variant whose module computes this adapter's update (None: plain)

    @property
    def scaling(self) -> float:
        return lora_scaling(self.lora_alpha, self.r, self.use_rslora)  # the one rule (layers/lowrank.py)



INITIAL_ATTR = "lora_initial"  # {adapter name: (A0, B0)}: a plain attribute, outside state_dict and parameters()


def remember_initial(layer: nn.Module, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """Keep copies of adapter `name`'s first (A0, B0) on the layer (an init that rewrote the base needs them to save
    a file exact on the original base): not saved, not trained, not in state_dict."""
    layer.__dict__.setdefault(INITIAL_ATTR, {})[name] = (a.detach().clone(), b.detach().clone())


def initial_factors(layer: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (A0, B0) remember_initial kept for adapter `name`, or None."""
    return layer.__dict__.get(INITIAL_ATTR, {}).get(name)

class LoraLayer(nn.Module):
    """A base layer plus named adapters. Per-adapter tensors live in dicts keyed by adapter name."""

    # attribute names of the ModuleDict / ParameterDict containers keyed by adapter name (for delete/save)
    adapter_containers: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B", "lora_dropout", "lora_variant")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_dropout = nn.ModuleDict()
        # variant modules that replace the plain update for one adapter (lorakit.variants.registry: make_layer)
        self.lora_variant = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_bias: dict[str, bool] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disable_adapters: bool = False
        # adapters that forward must compute: active and not merged (kept in sync by _refresh)
        self._live: tuple[str, ...] = ()
        # set while a mixed-adapter batch runs (each row its own adapter); see the serving code. Its
        # `apply(layer, x, y)` replaces the per-adapter loop of forward.
        self.mixed_rows = None

    # -- to be provided by each layer type ------------------------------------------------------------
    def create_weights(self, name: str, spec: AdapterSpec, dtype: torch.dtype, device: torch.device) -> None:
        raise NotImplementedError

    def reset_weights(self, name: str, init: bool | str) -> None:
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        """scaling * B @ A, in the layout of the base layer's weight."""
        raise NotImplementedError

    def lora_weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as the parameters are stored."""
        raise NotImplementedError

    def add_lora(self, y: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """y + the update of plain-LoRA adapter `name` for input x (each layer type's own products)."""
        raise NotImplementedError

    # -- forward: the base output, then each live adapter's update (a variant module does its own) ------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return y
        if self.mixed_rows is not None:  # a mixed-adapter batch (lorakit.mixed): every row its own adapters
            return self.mixed_rows.apply(self, x, y)
        for name in self._live:
            if name in self.lora_variant:
                y = self.lora_variant[name](self, name, x, y)
            else:
                y = self.add_lora(y, x, name)
        return y

    # -- shared bookkeeping ---------------------------------------------------------------------------
    @property
    def base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    # Code written for the plain layer reads module.weight / module.bias (transformers' get_input_embeddings().weight,
    # generation utilities, user code); the wrapper answers with the base layer's, as PEFT's wrappers do.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def base_shape(self) -> tuple[int, ...]:
        return weight_shape(self.base_layer)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    def cast_adapter_to_base_dtype(self, name: str) -> None:
        """Keep adapter `name` in the base weight's 16-bit dtype instead of fp32 (add_adapter's
        autocast_adapter_dtype=False): 16-bit products, and no cast of x. A no-op over a non-float base."""
        dtype = self.base_weight.dtype
        if not dtype.is_floating_point:
            return
        for attr in self.adapter_containers:
            holder = getattr(self, attr, None)
            if holder is None or name not in holder:
                continue
            item = holder[name]
            if isinstance(item, nn.Parameter):
                item.data = item.data.to(dtype)
            else:
                item.to(dtype)

    def add_adapter(self, name: str, spec: AdapterSpec) -> None:
        if name in self.r:
            raise AdapterError(f"this layer already has an adapter named {name!r}")
        variant = make_variant(self, spec)  # built (and validated) before the layer is touched
        weight = self.base_weight
        # Adapters of a 16-bit base train in fp32 (their updates are too small for bf16); fp32 stays fp32.
        dtype = torch.float32 if weight.dtype in LOW_PRECISION or not weight.dtype.is_floating_point else weight.dtype
        self.r[name] = spec.r
        self.lora_alpha[name] = spec.lora_alpha
        self.scaling[name] = spec.scaling
        self.lora_bias[name] = spec.lora_bias
        self.lora_dropout[name] = nn.Dropout(spec.lora_dropout) if spec.lora_dropout > 0 else nn.Identity()
        self.create_weights(name, spec, dtype, weight.device)
        if weight.device.type != "meta":
            self.reset_weights(name, spec.init_lora_weights)
        if variant is not None:
            self.lora_variant[name] = variant
            variant.attach(self, name)  # its own tensors (e.g. a magnitude vector), from the initialized weights
        self.train(self.base_layer.training)  # new modules (dropout) follow the model's train / eval mode

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is merged into the base weights; unmerge it before deleting")
        for attr in self.adapter_containers:
            container = getattr(self, attr, None)
            if container is not None and name in container:
                del container[name]
        for table in (self.r, self.lora_alpha, self.scaling, self.lora_bias):
            table.pop(name, None)
        self.active_adapters = [a for a in self.active_adapters if a != name]
        self._refresh()

    def set_active(self, names: Iterable[str]) -> None:
        self.active_adapters = [n for n in names if n in self.r]
        self._refresh()

    def set_scale(self, name: str, scaling: float) -> None:
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is merged; unmerge it before changing its scale")
        self.scaling[name] = scaling

    def _refresh(self) -> None:
        self._live = tuple(n for n in self.active_adapters if n not in self.merged_adapters)

    # -- merge / unmerge: W <- W + delta, exactly undone in reverse order -----------------------------
    def merge(self, names: Iterable[str] | None = None, safe_merge: bool = False) -> None:
        for name in list(names) if names is not None else list(self.active_adapters):
            if name in self.merged_adapters or name not in self.r:
                continue
            self._check_mergeable(name)
            variant = self.lora_variant[name] if name in self.lora_variant else None
            if variant is not None:
                variant.merge(self, name, safe_merge)
            else:
                self._add_to_base(name, sign=1.0, safe=safe_merge)
            self.merged_adapters.append(name)
        self._refresh()

    def unmerge(self, keep: int = 0) -> None:
        """Undo merges in reverse order, leaving the first `keep` merged adapters in place."""
        while len(self.merged_adapters) > keep:
            name = self.merged_adapters.pop()
            variant = self.lora_variant[name] if name in self.lora_variant else None
            if variant is not None:
                variant.unmerge(self, name)
            else:
                self._add_to_base(name, sign=-1.0, safe=False)
        self._refresh()

    def check_merge(self, names: Iterable[str], finite: bool = False) -> None:
        """Raise MergeError if merging `names` would fail (or, with `finite`, write NaN/Inf); writes nothing.

        merge_adapter checks every layer first, so a refused merge leaves all weights bit-for-bit as they were."""
        pending = [n for n in names if n in self.r and n not in self.merged_adapters]
        for name in pending:
            self._check_mergeable(name)
            self._check_bias_mergeable(name)
        weight = self.base_weight
        plain = [n for n in pending if n not in self.lora_variant]  # a variant checks its own merge
        if not finite or not plain or not weight.dtype.is_floating_point:  # packed (quantized) bases check in merge
            return
        with torch.no_grad():
            merged = weight.float()
            for name in plain:
                merged = merged + self.delta_weight(name).float()
                bias_delta = self.bias_delta(name)
                finite_bias = bias_delta is None or bool(torch.isfinite(bias_delta).all())
                if not finite_bias or not torch.isfinite(merged).all():
                    raise MergeError(f"merging adapter {name!r} would write NaN/Inf into the base weights")

    def _check_mergeable(self, name: str) -> None:
        """Layer types that cannot merge some configurations raise MergeError here."""

    def _check_bias_mergeable(self, name: str) -> None:
        if self.lora_bias.get(name) and getattr(self.base_layer, "bias", None) is None:
            raise MergeError(f"adapter {name!r} has lora_bias but the base layer has no bias to merge into")

    def _add_to_base(self, name: str, sign: float, safe: bool) -> None:
        weight = self.base_weight
        delta = self.delta_weight(name)
        bias_delta = self.bias_delta(name)
        self._check_bias_mergeable(name)  # before any write
        with torch.no_grad():
            if safe:
                merged = weight.float() + sign * delta.float()
                finite_bias = bias_delta is None or bool(torch.isfinite(bias_delta).all())
                if not finite_bias or not torch.isfinite(merged).all():
                    raise MergeError(
                        f"merging adapter {name!r} would write NaN/Inf into the base weights; "
                        "the model was left unchanged"
                    )
                weight.copy_(merged.to(weight.dtype))
            else:
                weight.add_(delta.to(weight.dtype), alpha=sign)
            if bias_delta is not None:
                bias = self.base_layer.bias
                bias.add_(bias_delta.to(bias.dtype), alpha=sign)

    def bias_delta(self, name: str) -> torch.Tensor | None:
        if not self.lora_bias.get(name):
            return None
        return self.lora_B[name].bias * self.scaling[name]

    def extra_repr(self) -> str:
        parts = [f"{n}: r={self.r[n]}, scaling={self.scaling[n]:g}" for n in self.r]
        state = f"active={self.active_adapters}, merged={self.merged_adapters}"
        return "; ".join([*parts, state])


def make_variant(layer: LoraLayer, spec: AdapterSpec) -> nn.Module | None:
    """The variant module a spec asks for (its registry entry's make_layer), or None for plain LoRA."""
    if spec.variant is None:
        return None
    return get_variant(spec.variant).make_layer(layer, spec)


def adapter_compute_input(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The adapter runs in its own dtype (fp32 over a 16-bit base); a no-op when dtypes agree."""
    return x if x.dtype == weight.dtype else x.to(weight.dtype)


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The logical shape of a layer's weight (a packed 4-bit weight reports the shape it stands for)."""
    weight = module.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return tuple(quant_state.shape)
    return tuple(weight.shape)
