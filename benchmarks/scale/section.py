"""What each part of benchmarks/SCALE.md hands back: its markdown and its targets, measured, met or not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Target:
    name: str  # as the issue states it, e.g. "QLoRA 7B step peak RSS <= 7 GiB"
    measured: str  # the value, with its unit, e.g. "5.8 GiB"
    met: bool | None  # None: not measured in this run (say why in `measured`)


@dataclass
class Section:
    title: str
    markdown: str  # the body: how it was measured, tables, links to PNGs written next to SCALE.md
    targets: list[Target] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # PNGs / JSON written into the report folder


def met_word(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]
