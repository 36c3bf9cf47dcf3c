"""Every ```python and ```bash block of README.md and docs/*.md runs as written after set-up (tests/docs/doc_blocks.py
says how), except the few marked `<!-- not-run: reason -->`, whose reason names the test that covers them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.doc_blocks import ROOT, Block, doc_files, read_blocks, run_block, runnable_blocks, with_train_overrides

COMMAND = re.compile(r"^\s*(lorakit(\s|$)|pip install\b)")
MAX_NOT_RUN = 6  # blocks a test cannot run (the set-up itself, a server that runs until stopped); keep them few
TIMEOUT_S = 300


def _params(lang: str) -> list:
    return [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.slow else [])
            for b in runnable_blocks(lang) if b.not_run is None]


def _check(block: Block, tmp_path: Path) -> None:
    result = run_block(block, tmp_path, TIMEOUT_S)
    assert result.returncode == 0, f"{block.id} ({block.lang}) exited {result.returncode}:\n{result.stdout[-6000:]}"


@pytest.mark.parametrize("block", _params("python"))
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    _check(block, tmp_path)


@pytest.mark.parametrize("block", _params("bash"))
def test_bash_block_runs(block: Block, tmp_path: Path) -> None:
    _check(block, tmp_path)


def test_not_run_blocks_are_few_and_name_an_existing_test() -> None:
    skipped = [b for lang in ("python", "bash") for b in runnable_blocks(lang) if b.not_run is not None]
    assert len(skipped) <= MAX_NOT_RUN, [b.id for b in skipped]
    for block in skipped:
        tests = re.findall(r"tests/[\w/]+\.py", block.not_run)
        assert tests, f"{block.id}: not-run reason {block.not_run!r} names no tests/...py that covers the block"
        assert all((ROOT / t).is_file() for t in tests), f"{block.id}: {tests} (not all exist)"


def test_commands_are_in_bash_blocks() -> None:
    """A `lorakit ...` or `pip install` command in a plain / text fence would escape the test: label it bash."""
    for doc in doc_files():
        for block in read_blocks(doc):
            if block.lang in ("python", "bash", "yaml"):
                continue
            commands = [line for line in block.code.splitlines() if COMMAND.match(line)]
            assert not commands, f"{block.id}: commands outside a ```bash block: {commands}"


def test_blocks_are_found_with_their_markers(tmp_path: Path) -> None:
    """The extraction itself: indented fences in list items, markers right above a fence, other languages kept."""
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n\n<!-- slow -->\n<!-- train-overrides: training.max_steps=2 -->\n```bash\nlorakit train c.yaml  # go\n"
        "```\n\n- item:\n  ```python\n  print(1)\n  ```\n<!-- not-run: tests/x.py -->\n\n```yaml\na: 1\n```\n",
        encoding="utf-8")
    bash, python, yaml = read_blocks(doc)
    assert (bash.lang, bash.line, bash.slow) == ("bash", 5, True)
    assert bash.markers["train-overrides"] == "training.max_steps=2"
    assert (python.lang, python.code, python.markers) == ("python", "print(1)\n", {})
    assert (yaml.lang, yaml.markers) == ("yaml", {})  # a marker separated by a blank line does not apply


def test_train_overrides_go_before_the_comment_and_after_continuations() -> None:
    code = "lorakit train a.yaml x=1  # note\nlorakit eval runs/a\nlorakit train b.yaml \\\n    y=2\n"
    assert with_train_overrides(code, "training.max_steps=2") == (
        "lorakit train a.yaml x=1 training.max_steps=2  # note\nlorakit eval runs/a\n"
        "lorakit train b.yaml \\\n    y=2 training.max_steps=2\n")
