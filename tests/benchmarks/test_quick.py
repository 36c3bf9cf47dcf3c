"""The benchmark harness end to end in quick mode (tiny model, 3 rounds): every row runs its lorakit == PEFT
check and lands in the table. The numbers of a quick run mean nothing; that the harness works does."""

from __future__ import annotations

import pytest
import torch

from benchmarks import run


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # quick mode runs on one thread; the rest of the suite keeps its setting


@pytest.mark.slow
def test_quick_mode_writes_every_row(tmp_path, keep_threads) -> None:
    out = tmp_path / "RESULTS.md"
    assert run.main(["--quick", "--out", str(out)]) == 0  # 1 if any row failed its check
    text = out.read_text()
    for name in ("unmerged LoRA forward / base forward", "merged LoRA forward / base forward", "k=8 distinct adapters",
                 "LoRA training tokens/s, lorakit / PEFT", "LoRA training speed-up over full fine-tuning",
                 "DoRA training step time / LoRA step time", "dropout 0.05 / dropout 0",
                 "adapter load + swap time / one forward", "LoRA training peak memory, lorakit / PEFT"):
        assert name in text, name
    assert "FAILED" not in text
    assert "command: `python -m benchmarks.run --quick" in text and "peft 0.21.2" in text


def test_unknown_row_is_rejected(capsys) -> None:
    with pytest.raises(SystemExit):
        run.main(["--rows", "forward,nonsense"])
    assert "nonsense" in capsys.readouterr().err
