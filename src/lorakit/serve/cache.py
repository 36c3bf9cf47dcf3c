"""The adapter cache of the server: adapters read from one directory into preallocated slots, N resident, LRU.

Adapters never enter the model's own adapter dicts. Each adapted layer gets a LayerBank (see lorakit.mixed) with
`max_resident + 1` slots; `read` parses and checks an adapter's files (the slow part, any thread), `install` copies
its tensors into a free or least-recently-used slot (a memory copy, far below one forward) and wraps the layers it
targets. Read adapters are also kept in a HostStore (read ahead on a reader thread, LRU within `host_bytes`), so
one evicted from its slot comes back without touching the disk. Ranks differ freely: a bank grows to the largest
rank it has seen. Batches use `plan(rows)`. Not thread-safe by itself: the server calls install / unload / plan
from its one model thread.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorakit.errors import AdapterError, AdapterFileError, LorakitError
from lorakit.inject import Conv1D, base_of, factory_for, set_submodule
from lorakit.io.checkpoint import CONFIG_NAME, read_adapter
from lorakit.io.fingerprint import check_fingerprint
from lorakit.layers.base import LOW_PRECISION, LoraLayer
from lorakit.mixed import MixedPlan, RowWeights, row_fold
from lorakit.serve.host_store import HostStore
from lorakit.variants.registry import file_roles, variants_of, with_hook

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
BASE = "base"  # the model name that means "no adapter"
HOST_BYTES = 1 << 30  # read adapters kept in memory beyond the slots


class UnknownAdapter(AdapterError):
    """The adapter name is well-formed but no such adapter exists in the adapter directory."""


def check_name(name: object) -> str:
    """An adapter name is a plain directory name: no '/', '.', '..', nor anything else that could leave the dir."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name == BASE:
        raise AdapterError(f"adapter name {name!r}: expected 1-64 letters, digits, '_' or '-' (starting with a "
                           f"letter or digit), and not {BASE!r}")
    return name


@dataclass
class PreparedAdapter:
    """An adapter read and checked, its tensors folded (see lorakit.mixed.fold) and on the model's device."""

    name: str
    layers: dict[str, tuple]  # layer path -> (a, b_eff, gain, shift)
    nbytes: int
    read_seconds: float


class AdapterCache:
    def __init__(self, model: nn.Module, adapter_dir: str | Path | None, max_resident: int = 8,
                 named: dict[str, Path] | None = None, host_bytes: int = HOST_BYTES) -> None:
        """`adapter_dir`: a folder of adapters (one sub-folder each; None: none); `named`: adapters the operator named
        one by one (name -> local folder, e.g. a Hub adapter's snapshot), served beside the folder's; `host_bytes`:
        memory for read adapters beyond the slots (0: every load reads the files)."""
        if max_resident < 1:
            raise LorakitError(f"max_resident={max_resident}: at least one adapter must fit")
        self.model = model
        self.dir = Path(adapter_dir).resolve() if adapter_dir is not None else None
        if self.dir is not None and not self.dir.is_dir():
            raise AdapterFileError(f"adapter directory {adapter_dir} does not exist")
        self.named = {check_name(name): Path(path) for name, path in (named or {}).items()}
        self.max_resident = max_resident
        self.resident: OrderedDict[str, int] = OrderedDict()  # name -> slot, least recently used first
        self._free = list(range(max_resident, 0, -1))
        self._slot_paths: dict[int, list[str]] = {}
        self.banks: dict[int, LayerBank] = {}  # id(wrapped layer) -> its bank
        self.wrapped: dict[str, LoraLayer] = {}  # layer path -> wrapper the cache made or found
        self.last_swap_seconds = 0.0
        self.store = HostStore(self.read, self._files, host_bytes)

    # -- the directory -------------------------------------------------------------------------------------------
    def path_of(self, name: str) -> Path:
        """The adapter's directory; refuses any name or symlink that would lead outside the adapter directory."""
        check_name(name)
        if name in self.named:  # named on the command line by the operator: any folder
            return self.named[name]
        if self.dir is None:
            raise UnknownAdapter(f"no adapter named {name!r}; available: {self.available()[:20]}")
        path = self.dir / name
        if not (path / CONFIG_NAME).is_file():
            raise UnknownAdapter(f"no adapter named {name!r} in the adapter directory; available: "
                                 f"{self.available()[:20]}")
        if path.resolve().parent != self.dir:
            raise AdapterError(f"adapter {name!r} resolves outside the adapter directory; refusing it")
        return path

    def available(self) -> list[str]:
        """Adapters named one by one, and those on disk (each a sub-directory with an adapter_config.json)."""
        found = list(self.named)
        for entry in self.dir.iterdir() if self.dir is not None else ():
            named = NAME.fullmatch(entry.name) and entry.name != BASE
            if named and (entry / CONFIG_NAME).is_file() and entry.resolve().parent == self.dir:
                found.append(entry.name)
        return sorted(set(found))

    def exists(self, name: str) -> bool:
        try:
            self.path_of(name)
        except AdapterError:
            return name in self.resident
        return True

    def _files(self, name: str) -> list[Path]:
        return sorted(p for p in self.path_of(name).iterdir() if p.is_file())

    def ready(self, name: str) -> bool:
        """Resident, or read and waiting in memory; otherwise its read is started and this says False."""
        return name in self.resident or self.store.ready(name)

    def prefetch(self, names: Sequence[str]) -> None:
        """Start reading the adapters that are not resident (any thread)."""
        for name in names:
            if name not in self.resident:
                self.store.prefetch(name)

    def close(self) -> None:
        self.store.close()

    # -- reading (any thread) --------------------------------------------------------------------------------------
    def read(self, name: str) -> PreparedAdapter:
        start = time.perf_counter()
        path = self.path_of(name)
        file = read_adapter(path)  # io/adapter_file.AdapterFile: config, records, tensors grouped per layer
        config, source = file.config, f"adapter {name!r} ({file.directory})"
        if file.records.get("lorakit_fingerprint"):
            check_fingerprint(file.records["lorakit_fingerprint"], self.model, source)
        refusing = with_hook(config, "serve_refusal")  # e.g. factors that mean something only on a rewritten base
        if refusing is not None:
            raise AdapterFileError(f"{source} is {refusing.serve_refusal(config)}")
        unfoldable = [v.title for v in file.variants if v.make_layer and not (v.row_factor or v.plain_parts)]
        if unfoldable:  # its per-layer computation has no fold to plain factors: serving it as LoRA would be wrong
            raise AdapterFileError(f"{source} is a {unfoldable[0]} adapter, which has no fold to plain low-rank "
                                   "factors; the server serves LoRA and the variants that declare one")
        grouped, others = file.split()
        if others:
            raise AdapterFileError(f"{source} has tensor {next(iter(others))} (a modules_to_save copy or a trained "
                                   "base bias), which cannot differ per request; the server serves LoRA-only adapters")
        if not grouped:  # nothing would land on the model: serving it would answer as the base under its name
            raise AdapterFileError(f"{source} holds no tensor (an empty adapter_model.safetensors); save the "
                                   "adapter again")
        if with_hook(config, "plain_parts") is not None:  # a variant's own factors as plain LoRA's A and B
            grouped = {p: parts for p, parts in file.plain_layers().items() if parts["lora_A.weight"].numel()}
        layers, nbytes = {}, 0
        for layer_path, parts in grouped.items():
            prepared = self._prepare_layer(layer_path, parts, config, source)
            layers[layer_path] = prepared
            nbytes += sum(t.numel() * t.element_size() for t in prepared if t is not None)
        return PreparedAdapter(name, layers, nbytes, time.perf_counter() - start)

    def _prepare_layer(self, path: str, parts: dict[str, torch.Tensor], config, source: str) -> tuple:
        try:
            base = base_of(self.model.get_submodule(path))
        except AttributeError:
            raise AdapterFileError(f"{source} adapts layer {path}, which this model does not have") from None
        embedding = isinstance(base, nn.Embedding)
        a = parts.get("lora_embedding_A" if embedding else "lora_A.weight")
        b = parts.get("lora_embedding_B" if embedding else "lora_B.weight")
        if a is None or b is None or factory_for(base) is None or not _mixable(base):
            raise AdapterFileError(f"{source}: layer {path} ({type(base).__name__}) has tensors {sorted(parts)}; the "
                                   "server mixes LoRA on Linear, Conv1D and Embedding layers only")
        weight = base.weight
        matrix = weight if isinstance(base, nn.Linear) else weight.T  # (out, in); Conv1D and Embedding are (in, out)
        rank = a.shape[0]
        if a.dim() != 2 or b.shape != (matrix.shape[0], rank) or a.shape[1] != matrix.shape[1]:
            raise AdapterFileError(f"{source}: layer {path}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a "
                                   f"layer with weight (out, in) = {tuple(matrix.shape)}")
        if config.rank_for(path) != rank:
            raise AdapterFileError(f"{source}: layer {path} has rank {rank} in the weights, {config.rank_for(path)} "
                                   "in adapter_config.json")
        dtype = torch.float32 if weight.dtype in LOW_PRECISION else weight.dtype
        a, b = a.to(weight.device, dtype), b.to(weight.device, dtype)
        scale = config.scaling_for(path)
        factor, scales_base = None, False
        used = variants_of(config)
        for role, variant in file_roles().items():  # a variant's own tensors exactly when its config says so
            present = any(k == role or k.startswith(role + ".") for k in parts)
            needed = variant in used and (variant.flag is not None or variant.row_factor is not None)
            if present != (variant in used) and (present or needed):
                raise AdapterFileError(f"{source}: layer {path}: {variant.flag or variant.name}={variant in used} but "
                                       f"the {role} is {'present' if present else 'missing'}")
            if variant.row_factor is not None and present:  # a per-row factor g, computed once here
                factor, scales_base = variant.row_factor(parts, a, b, matrix.to(dtype), scale)
        bias = parts.get("lora_B.bias")
        return fold(a, b, scale, factor, None if bias is None else bias.to(weight.device, dtype), scales_base)

    # -- slots (the model thread) ------------------------------------------------------------------------------------
    def install(self, prepared: PreparedAdapter, pinned: Sequence[str] = ()) -> int:
        """Copy a read adapter into a slot (replacing an older copy of the same name); evicts the least recently
        used adapter not in `pinned` when all slots are taken. Returns the slot."""
        start = time.perf_counter()
        if prepared.name in self.resident:
            self.unload(prepared.name, forget=False)
        if not self.store.holds(prepared.name, prepared):  # read elsewhere (an explicit load): the copy from now on
            self.store.put(prepared.name, prepared)
        slot = self._free.pop() if self._free else self._evict(pinned)
        for path, tensors in prepared.layers.items():
            layer = self._wrap(path)
            bank = self.banks.get(id(layer))
            if bank is None:
                a = tensors[0]
                bank = LayerBank(layer, self.max_resident + 1, a.shape[0], a.dtype, a.device)
                self.banks[id(layer)] = bank
            bank.put(slot, *tensors)
        self._slot_paths[slot] = list(prepared.layers)
        self.resident[prepared.name] = slot
        self.last_swap_seconds = time.perf_counter() - start
        return slot

    def unload(self, name: str, forget: bool = True) -> bool:
        """Free an adapter's slot (its files stay on disk; `forget`: drop its copy in memory too, so the next use
        reads the files again). False if it was not resident."""
        if forget:
            self.store.forget(name)
        slot = self.resident.pop(name, None)
        if slot is None:
            return False
        for path in self._slot_paths.pop(slot, []):
            self.banks[id(self.wrapped[path])].clear(slot)
        self._free.append(slot)
        return True

    def ensure(self, names: Sequence[str], pinned: Sequence[str] = ()) -> None:
        """Make the adapters resident (reading the missing ones now) and mark them recently used."""
        names = list(dict.fromkeys(names))
        if len(names) > self.max_resident:
            raise AdapterError(f"{len(names)} adapters requested at once; at most {self.max_resident} fit")
        for name in names:
            if name not in self.resident:
                self.install(self.store.take(name), pinned=[*pinned, *names])
            self.resident.move_to_end(name)

    def _evict(self, pinned: Sequence[str]) -> int:
        victim = next((n for n in self.resident if n not in pinned), None)
        if victim is None:
            raise AdapterError(f"all {self.max_resident} adapter slots are in use by the running batch")
        slot = self.resident[victim]
        self.unload(victim, forget=False)
        self._free.remove(slot)
        return slot

    def _wrap(self, path: str) -> LoraLayer:
        """The layer at `path` as a LoRA wrapper (wrapped in place on first use; a wrapper without adapters
        computes its base layer unless a plan is set on it)."""
        if path in self.wrapped:
            return self.wrapped[path]
        module = self.model.get_submodule(path)
        if not isinstance(module, LoraLayer):
            module = factory_for(module)(module)
            set_submodule(self.model, path, module)
        self.wrapped[path] = module
        return module

    # -- batches -------------------------------------------------------------------------------------------------------
    def layers(self) -> list[LoraLayer]:
        return list(self.wrapped.values())

    def plan(self, rows: Sequence[Sequence[tuple[str, float]]]) -> MixedPlan:
        """A mixed-adapter plan over resident adapters: per row a list of (name, weight); [] is the base model."""
        for row in rows:
            for name, _ in row:
                if name not in self.resident:
                    raise AdapterError(f"adapter {name!r} is not resident; resident: {list(self.resident)}")
        slots = dict(self.resident)  # the running batch pins its adapters: these slots stay theirs
        entries = [list(row) for row in rows]

        def weights_for(layer: LoraLayer, plan: MixedPlan) -> RowWeights | None:
            bank = self.banks.get(id(layer))
            return None if bank is None else bank.row_weights(plan, slots)

        return MixedPlan(entries, weights_for)


def _mixable(base: nn.Module) -> bool:
    """Layer types whose banks the mixed forward serves (Linear, transformers' Conv1D, Embedding)."""
    return isinstance(base, (nn.Linear, nn.Embedding)) or (Conv1D is not None and isinstance(base, Conv1D))



# -- slot buffers ----------------------------------------------------------------------------------------------------
class LayerBank:
    """Preallocated, zero-padded slots of one Linear / Embedding layer; slot 0 is never written.

    linear: a (slots, rank, in); embedding: a (slots, vocab, rank) (a lookup table); b (slots, out, rank) with the
    scale and a variant's row factor g folded in; gain (slots, out) = g - 1 and shift (slots, out) = s g lora_bias,
    once needed."""

    def __init__(self, layer: LoraLayer, slots: int, rank: int, dtype: torch.dtype, device: torch.device) -> None:
        self.embedding = isinstance(layer.base_layer, nn.Embedding)
        base = layer.base_layer
        self.in_features, self.out_features = (base.num_embeddings, base.embedding_dim) if self.embedding else (
            layer.in_features, layer.out_features)
        self.dtype, self.device = dtype, device
        self.ranks = [0] * slots
        self.gain: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        self.a = torch.zeros(self._a_shape(slots, rank), dtype=dtype, device=device)
        self.b = torch.zeros(slots, self.out_features, rank, dtype=dtype, device=device)

    def _a_shape(self, slots: int, rank: int) -> tuple[int, int, int]:
        return (slots, self.in_features, rank) if self.embedding else (slots, rank, self.in_features)

    def _a(self, slot: int | slice, rank: int) -> torch.Tensor:
        return self.a[slot, :, :rank] if self.embedding else self.a[slot, :rank]

    def grow(self, rank: int) -> None:
        """Reallocate for a larger rank (rare: a bigger adapter than any before), keeping the slots' contents."""
        old_a, old_b, r = self.a, self.b, self.b.shape[-1]
        self.a = torch.zeros(self._a_shape(old_b.shape[0], rank), dtype=self.dtype, device=self.device)
        self.b = torch.zeros(old_b.shape[0], self.out_features, rank, dtype=self.dtype, device=self.device)
        self._a(slice(None), r).copy_(old_a)
        self.b[:, :, :r].copy_(old_b)

    @torch.no_grad()
    def put(self, slot: int, a: torch.Tensor, b: torch.Tensor, gain: torch.Tensor | None,
            shift: torch.Tensor | None) -> None:
        """Write one adapter: a (r, in), b (out, r) with its scale folded in. A copy: far cheaper than a forward."""
        r = a.shape[0]
        if r > self.b.shape[-1]:
            self.grow(8 * math.ceil(r / 8))
        self.clear(slot)
        self._a(slot, r).copy_(a.T if self.embedding else a)
        self.b[slot, :, :r].copy_(b)
        self.ranks[slot] = r
        for attr, value in (("gain", gain), ("shift", shift)):
            if value is not None:
                if getattr(self, attr) is None:
                    setattr(self, attr, torch.zeros(len(self.ranks), self.out_features, dtype=self.dtype,
                                                    device=self.device))
                getattr(self, attr)[slot].copy_(value)

    @torch.no_grad()
    def clear(self, slot: int) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.ranks[slot] = 0
        for extra in (self.gain, self.shift):
            if extra is not None:
                extra[slot].zero_()

    def row_weights(self, plan: MixedPlan, slots: dict[str, int]) -> RowWeights | None:
        """Gather each row's slots (views of one slot when all rows are alike)."""
        rows = plan.entries[:1] if plan.uniform else plan.entries
        pairs = [[(slots[n], w) for n, w in row if self.ranks[slots[n]]] for row in rows]
        if not any(pairs):
            return None
        rank = max(self.ranks[s] for row in pairs for s, _ in row)
        width = max(len(row) for row in pairs)
        padded = [row + [(0, 0.0)] * (width - len(row)) for row in pairs]
        index = torch.tensor([[s for s, _ in row] for row in padded], device=self.device)  # (n, K)
        weight = torch.tensor([[w for _, w in row] for row in padded], dtype=self.dtype, device=self.device)
        if len(padded) == 1 and width == 1:  # views, no copy
            slot = padded[0][0][0]
            a, b, scale = self._a(slice(slot, slot + 1), rank), self.b[slot:slot + 1, :, :rank], padded[0][0][1]
        else:
            a_parts = [self._a(slice(None), rank).index_select(0, index[:, k]) for k in range(width)]
            b_parts = [self.b[:, :, :rank].index_select(0, index[:, k]) for k in range(width)]
            a = a_parts[0] if width == 1 else torch.cat(a_parts, dim=2 if self.embedding else 1)
            b = b_parts[0] if width == 1 else torch.cat(b_parts, dim=2)
            scale = weight.repeat_interleave(rank, 1)[:, None, :]  # (n, 1, K * R)
        gain = None if self.gain is None else (self.gain[index] * weight[:, :, None]).sum(1, keepdim=True)
        shift = None if self.shift is None else (self.shift[index] * weight[:, :, None]).sum(1, keepdim=True)
        return RowWeights(a, b, scale, gain, shift)


def fold(a: torch.Tensor, b: torch.Tensor, scale: float, factor: torch.Tensor | None, bias: torch.Tensor | None,
         scales_base: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(a, s g b, g - 1 or None, s g bias): the scale and a variant's row factor g folded in, as LayerBank.put takes
    them; g - 1 (the change of the base output) only when g also scales the base output."""
    b, gain, shift = row_fold(b, factor, scales_base, bias, scale)
    return a, b * scale, gain, shift
