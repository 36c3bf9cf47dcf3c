"""The variant registry: the one place the rest of lorakit asks what a LoRA variant does.

A `Variant` declares how it is switched on, and every hook the shared code needs; a field left None means "no
difference from plain LoRA" for that concern. What selects a variant for an adapter config (`variants_of`):

    peft_type      adapter_config.json's "peft_type" it owns (AdaLoRA: "ADALORA"); its config is `config_class`
    flag           a boolean LoraConfig field that switches it on (DoRA: "use_dora")
    owns_init      a predicate on init_lora_weights (PiSSA / OLoRA: values that rewrite the base weights)
    section        a section of `lorakit train`'s YAML (Delta-LoRA: "delta_lora"), parsed into `section_class`

What each concern asks (the callers in brackets):

    decompose(W, r, s, init)             (A, B, residual) for an init it owns that starts from the base weight:
                                         the layer writes A, B and puts the residual in the base          [layers]
    make_layer(layer, spec)              the per-adapter module a LoraLayer runs in its forward / merge  [layers]
    file_roles                           tensor roles it adds to a file (e.g. "lora_magnitude_vector")   [io]
    read_config(raw, adapter_name)       (config, lorakit_* extras) from adapter_config.json values      [io]
    save(model, path, name, raw)         writes the adapter in its own file form                         [io]
    copy_tensors(model, tensors, name, source)  puts a file's tensors into the adapter just added      [io]
    plain_parts(parts)                   one layer's file tensors (by role) in plain LoRA's roles
                                         ("lora_A.weight", "lora_B.weight"); rank 0 adds nothing [serve, inspect]
    row_factor(parts, a, b, matrix, s)   (g, scales_base): the per-output-row factor g its update applies on top
                                         of s·B·A, and whether g also scales the base output (DoRA's
                                         m / ||W + s·B·A|| does); the layer modules' `fold` is the same  [serve]
    serve_refusal(config)                why the server cannot serve this file as it is, or None         [serve]
    consistency(config, tensors)         a model-free check of a file (None: the plain checks apply)      [inspect]
    keeps_fp32                           adapters stay fp32 over a 16-bit base (no autocast_adapter_dtype=False)
    describe(config, total_rank)         an extra line for `lorakit inspect`                              [cli]
    training: TrainingHooks              config changes, hooks, the save and the summary of a run        [train]

Built-in variants register themselves when `lorakit.variants` is imported (`import lorakit` does); a project's own
variant calls `register_variant` (tests/variants/test_out_of_tree_variant.py shows one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lorakit.errors import ConfigError

PLAIN_PEFT_TYPE = "LORA"


@dataclass(frozen=True)
class TrainingHooks:
    """What a variant changes in a `lorakit train` run; every callable is optional.

    adapter_config(cfg, base, lora) -> lora     the adapter config with what the variant adds (before injection)
    check(cfg)                                  validate the run's config (raise ConfigError)
    hooks(model, cfg, total_steps) -> list      TrainHooks the loop calls (train/hooks.py)
    prepare(model, cfg)                         change the model once the adapter is on (e.g. its attention)
    save(model, directory, name, hook) -> bool  save the trained adapter itself (True) or leave it to save_adapter
    summary(model, name, hook, out, plot)       extra summary.json entries for its hook
    report_rows(summary) -> [(label, value)]    rows the run report adds from summary.json
    param_group(dotted_name, training) -> (kind, lr) | None   the optimizer group of a parameter (LoRA+'s B side)
    run_files                                   files it may write into the run folder
    """

    adapter_config: Callable[..., Any] | None = None
    check: Callable[[Any], None] | None = None
    hooks: Callable[..., list] | None = None
    prepare: Callable[..., None] | None = None
    save: Callable[..., bool] | None = None
    summary: Callable[..., dict] | None = None
    report_rows: Callable[[dict], list] | None = None
    param_group: Callable[..., tuple[str, float] | None] | None = None
    run_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One LoRA variant: how it is selected and what it changes (see the module docstring)."""

    name: str
    title: str  # for messages ("DoRA", "AdaLoRA")
    peft_type: str | None = None
    flag: str | None = None
    owns_init: Callable[[Any], bool] | None = None
    decompose: Callable[..., tuple] | None = None
    config_class: type | None = None
    section: str | None = None
    section_class: type | None = None
    make_layer: Callable[..., Any] | None = None
    file_roles: tuple[str, ...] = ()
    read_config: Callable[..., tuple] | None = None
    save: Callable[..., Any] | None = None
    copy_tensors: Callable[..., None] | None = None
    plain_parts: Callable[..., Any] | None = None
    row_factor: Callable[..., Any] | None = None
    serve_refusal: Callable[[Any], str | None] | None = None
    consistency: Callable[..., str | None] | None = None
    keeps_fp32: bool = False
    describe: Callable[..., str] | None = None
    training: TrainingHooks = field(default_factory=TrainingHooks)

    def selected_by(self, config: Any) -> bool:
        """Does this adapter config use the variant?"""
        if self.peft_type is not None and getattr(config, "peft_type", PLAIN_PEFT_TYPE) == self.peft_type:
            return True
        if self.flag is not None and bool(getattr(config, self.flag, False)):
            return True
        return self.owns_init is not None and self.owns_init(getattr(config, "init_lora_weights", True))


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant, replace: bool = False) -> Variant:
    """Add a variant; its name, peft_type, flag and section must be new (unless `replace`)."""
    if not replace:
        for other in _REGISTRY.values():
            for attr in ("name", "peft_type", "flag", "section"):
                value = getattr(variant, attr)
                if value is not None and value == getattr(other, attr):
                    raise ConfigError(f"variant {variant.name!r}: {attr}={value!r} is already registered by "
                                      f"variant {other.name!r}")
    _REGISTRY[variant.name] = variant
    return variant


def unregister_variant(name: str) -> None:
    _REGISTRY.pop(name, None)


def all_variants() -> Iterator[Variant]:
    return iter(tuple(_REGISTRY.values()))


def get_variant(name: str) -> Variant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown LoRA variant {name!r}; registered: {sorted(_REGISTRY)}") from None


def variants_of(config: Any) -> list[Variant]:
    """The variants an adapter config uses, in registration order (e.g. [DoRA, PiSSA] for both)."""
    return [v for v in _REGISTRY.values() if v.selected_by(config)]


def with_hook(config: Any, attr: str) -> Variant | None:
    """The first variant of `config` that defines `attr` (e.g. "save", "row_factor"), or None."""
    return next((v for v in variants_of(config) if getattr(v, attr) is not None), None)


def layer_variant_name(config: Any) -> str | None:
    """The variant whose per-adapter module the layers build for `config` (None: plain LoRA)."""
    variant = with_hook(config, "make_layer")
    return None if variant is None else variant.name


def for_peft_type(peft_type: Any) -> Variant | None:
    """The variant that owns a file's peft_type (None for "LORA" or an unknown one)."""
    return next((v for v in _REGISTRY.values() if v.peft_type is not None and v.peft_type == peft_type), None)


def for_init(init: Any) -> Variant | None:
    """The variant that owns an init_lora_weights value (None for True / False / "gaussian")."""
    return next((v for v in _REGISTRY.values() if v.owns_init is not None and v.owns_init(init)), None)


def for_section(section: str) -> Variant | None:
    """The variant that owns a `lorakit train` YAML section."""
    return next((v for v in _REGISTRY.values() if v.section == section), None)


def peft_types() -> list[str]:
    """Every peft_type lorakit reads: "LORA" and the variants'."""
    return [PLAIN_PEFT_TYPE, *(v.peft_type for v in _REGISTRY.values() if v.peft_type)]


def config_flags() -> list[str]:
    return [v.flag for v in _REGISTRY.values() if v.flag]


def file_roles() -> dict[str, Variant]:
    """Tensor role -> the variant that owns it (roles a plain LoRA file never has)."""
    return {role: v for v in _REGISTRY.values() for role in v.file_roles}


def training_sections() -> dict[str, type]:
    """`lorakit train` YAML sections the variants add: name -> its dataclass."""
    return {v.section: v.section_class for v in _REGISTRY.values() if v.section and v.section_class}


def training_variants(config: Any, sections: dict[str, Any]) -> list[Variant]:
    """Variants active in a run: those of the adapter config, then those whose section is set."""
    chosen = variants_of(config)
    chosen += [v for v in _REGISTRY.values() if v.section and sections.get(v.section) is not None and v not in chosen]
    return chosen
