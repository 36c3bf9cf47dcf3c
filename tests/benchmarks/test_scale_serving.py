"""The serving section of benchmarks/SCALE.md in quick mode: it finishes within 60 s, serves every request without an
error, every re-sent request gives the text it gave under load, the baseline's texts equal lorakit's, and the
curve file holds the numbers the tables show."""

from __future__ import annotations

import json
import re
import time

import pytest
from benchmarks.scale.serving import run


@pytest.mark.slow
def test_quick_serving_section(tmp_path):
    start = time.perf_counter()
    section = run(tmp_path, quick=True)
    assert time.perf_counter() - start <= 60
    names = [t.name for t in section.targets]
    assert names[0].startswith("lorakit >= 3x") and names[1].startswith("lorakit at 1000 adapters")
    assert all(t.met is not None for t in section.targets)
    text_target = section.targets[2]
    assert text_target.met, text_target.measured  # PEFT-independent: lorakit under load vs lorakit alone
    assert "HTTP errors: 0." in section.markdown
    peft_row = next(line for line in section.markdown.splitlines() if line.startswith("| 8 | transformers + PEFT"))
    equal, total = map(int, re.search(r"(\d+)/(\d+) equal lorakit's", peft_row).groups())
    assert equal == total > 0  # the baseline is an independent implementation of the same adapters
    assert re.search(r"(\d+) of \1 checked requests differ from the base model's", section.markdown)
    curve = json.loads((tmp_path / "serving_curve.json").read_text())
    assert [c for c, _ in curve["batch"]] == [1, 4, 16, 32]
    assert [c for c, _ in curve["adapters"]] == [8, 64, 1000]
    table = dict(re.findall(r"^\| (\d+) \| ([\d.]+) \|$", section.markdown, re.MULTILINE))  # adapters | tok/s
    for count, tok_s in curve["adapters"]:
        assert tok_s > 0 and abs(float(table[str(count)]) - tok_s) <= 0.051
    assert section.files == [tmp_path / "serving_curve.json"]
