"""Every sentence of README.md and docs/*.md that says lorakit works with another tool names the test that proves
it with the real tool (tests/docs/interop_claims.py says how claims are found)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.doc_blocks import doc_files
from tests.docs.interop_claims import claims, unproven


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_every_interop_claim_names_a_test_with_the_tool(doc: Path) -> None:
    bad = [f"{c.where}: {', '.join(unproven(c))} in {c.text!r}" for c in claims(doc) if unproven(c)]
    assert not bad, "interop claims without a test that uses the tool (name tests/...py or drop the claim):\n" + \
        "\n".join(bad)


def test_claims_are_found_and_checked(tmp_path: Path) -> None:
    """The finder itself: a claim needs a tool and a word of working together; the test must mention the tool."""
    doc = tmp_path / "x.md"
    doc.write_text(
        "# Loads in PEFT\n\nBenchmarks race against PEFT. An adapter loads in PEFT (tests/io/test_peft_interop.py).\n"
        "- An adapter loads in vLLM (tests/io/test_peft_interop.py).\n\n"
        "```python\nx = 1  # works with diffusers\n```\n",
        encoding="utf-8")
    found = [(c.tools, unproven(c)) for c in claims(doc, tmp_path)]
    assert found == [(("PEFT",), []), (("vLLM",), ["vLLM"]), (("diffusers",), ["diffusers"])]
