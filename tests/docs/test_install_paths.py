"""The install commands the README shows resolve with pip from a clone, and its extras table lists exactly the
extras pyproject.toml defines (as the installed package reports them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import metadata

import pytest

from tests.docs.doc_blocks import ROOT, read_blocks

README = ROOT / "README.md"


def _install_commands() -> list[str]:
    for block in read_blocks(README):
        lines = [line.split("#")[0].strip() for line in block.code.splitlines()]
        commands = [line for line in lines if line.startswith("pip install")]
        if commands:
            return commands
    raise AssertionError("README.md has no block of pip install commands")


@pytest.mark.slow
@pytest.mark.parametrize("command", _install_commands())
def test_each_readme_install_command_resolves_with_pip(command):
    args = command.split(maxsplit=2)[2].replace("$PWD", str(ROOT)).strip('"')
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PIP_NO_INPUT": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert "Would install lorakit" in output
    assert "does not provide the extra" not in output


def test_the_extras_table_lists_every_extra_of_pyproject():
    extras = set(metadata("lorakit").get_all("Provides-Extra"))  # pyproject's optional-dependencies, as installed
    table = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {name for line in table for name in re.findall(r"`([\w-]+)`", line.split("|")[1])}
    assert documented == extras
