"""The fenced code blocks of README.md and docs/*.md, and how the doc tests run them.

A block is a fence opened with ```python or ```bash (indented fences inside list items too). Comment lines right
above the fence steer the test (they do not show when the Markdown is rendered):

    <!-- not-run: why, and the test that covers it instead -->   the block is not run (keep these few)
    <!-- slow -->                                                   run in the slow set (pytest -m slow)
    <!-- train-overrides: training.max_steps=2 -->                  appended to every `lorakit train` line

Python blocks run one per fresh interpreter, each in an empty temporary directory: a block must build what it uses.
Bash blocks run as one `set -euo pipefail` script each, in a temporary directory that links the repository's
configs/ and scripts/, with .venv's `lorakit` and `python` on PATH: what a user types after set-up, from the
repository root, without writing into the clone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = ("python", "bash")
LINKED = ("configs", "scripts")  # what a bash block may read from the repository
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<key>not-run|slow|train-overrides)\s*(?::\s*(?P<value>.*?))?\s*-->\s*$")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> str | None:
        return self.markers.get("not-run")

    @property
    def slow(self) -> bool:
        return "slow" in self.markers


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file (any language), with the markers on the lines just above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        blocks.append(Block(path, i + 1, opening["lang"], "\n".join(body) + "\n", _markers_above(lines, i)))
        i = end + 1
    return blocks


def _markers_above(lines: list[str], fence_index: int) -> dict[str, str]:
    markers, j = {}, fence_index - 1
    while j >= 0 and (found := MARKER.match(lines[j])):
        markers[found["key"]] = (found["value"] or "").strip()
        j -= 1
    return markers


def runnable_blocks(lang: str) -> list[Block]:
    return [b for doc in doc_files() for b in read_blocks(doc) if b.lang == lang]


def with_train_overrides(code: str, overrides: str) -> str:
    """Append `overrides` to every `lorakit train ...` command (after its last continuation line), before the
    trailing `  # comment`."""
    lines = code.splitlines()
    in_train = False
    for i, line in enumerate(lines):
        starts = re.match(r"^\s*lorakit train\b", line) is not None
        in_train = starts or in_train
        if overrides and in_train and not line.rstrip().endswith("\\"):
            command, hash_, comment = line.partition("  #")
            lines[i] = f"{command.rstrip()} {overrides}" + (f"  #{comment}" if hash_ else "")
        if not line.rstrip().endswith("\\"):
            in_train = False
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)  # the installed lorakit, as a user has it
    return env


def run_block(block: Block, workdir: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run one block in `workdir`; the result's stdout holds both streams."""
    if block.lang == "python":
        script = workdir / "snippet.py"
        script.write_text(block.code, encoding="utf-8")
        command = [sys.executable, script.name]
    else:
        for name in LINKED:
            (workdir / name).symlink_to(ROOT / name, target_is_directory=True)
        code = with_train_overrides(block.code, block.markers.get("train-overrides", ""))
        (workdir / "snippet.sh").write_text("set -euo pipefail\nset -x\n" + code, encoding="utf-8")
        command = ["bash", "snippet.sh"]
    return subprocess.run(command, cwd=workdir, env=environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
