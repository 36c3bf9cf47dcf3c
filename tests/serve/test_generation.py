"""Sampling, incremental detokenization with stop strings, and batched generation with rows leaving early."""

from __future__ import annotations

import torch

from lorakit.serve.generation import Row, SamplingParams, TextStream, generate_batch, sample


class Words:
    """A stand-in tokenizer: token i is the word WORDS[i]; decode joins with spaces (like a WordLevel tokenizer)."""

    WORDS = ("<pad>", "the", "cat", "sat", "on", "mat", "END", "caf\ufffd")
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.WORDS[i] for i in ids)


def test_greedy_and_nucleus_sampling():
    logits = torch.log(torch.tensor([0.05, 0.4, 0.3, 0.2, 0.05]))
    assert sample(logits, SamplingParams(temperature=0), None) == 1
    generator = torch.Generator().manual_seed(0)
    drawn = {sample(logits, SamplingParams(top_p=0.6), generator) for _ in range(300)}
    assert drawn == {1, 2}  # 0.4 + 0.3 reaches 0.6: the nucleus is the two top tokens
    drawn = {sample(logits, SamplingParams(top_p=1.0), generator) for _ in range(300)}
    assert drawn == {0, 1, 2, 3, 4}
    assert {sample(logits, SamplingParams(top_p=1e-6), generator) for _ in range(50)} == {1}
    first = [sample(logits, SamplingParams(), torch.Generator().manual_seed(9)) for _ in range(5)]
    assert first == [sample(logits, SamplingParams(), torch.Generator().manual_seed(9)) for _ in range(5)]


def test_text_stream_stops_and_holds_back_possible_stop_prefixes():
    stream = TextStream(Words(), stop=["sat on the"])
    assert stream.push(1) == ("the", False)
    assert stream.push(2) == (" cat", False)
    assert stream.push(3) == (" ", False)  # "sat" might start "sat on the": held back
    assert stream.push(4) == ("", False)
    assert stream.push(5) == ("sat on mat", False)  # not the stop string after all
    assert stream.push(3) == (" ", False)
    assert stream.push(4) == ("", False)
    assert stream.push(1) == ("", True)  # the stop string: nothing of it is ever sent
    assert stream.text == "the cat sat on mat "


def test_text_stream_holds_back_an_incomplete_character():
    """A trailing U+FFFD is a multi-byte character cut in half: sent only once later tokens complete it."""
    stream = TextStream(Words(), stop=[])
    assert stream.push(7) == ("caf", False)
    assert stream.push(2) == ("\ufffd cat", False)
    assert stream.push(7) == (" caf", False)
    assert stream.flush() == ""


def test_batched_rows_equal_rows_generated_alone():
    from tests.helpers import tiny_llama

    model = tiny_llama()
    prompts = [[5, 9, 11], [7, 3, 8, 20, 4, 2], [30]]
    limits = [6, 2, 4]
    seen_rows: list[list[int]] = []
    outputs: list[list[int]] = [[] for _ in prompts]

    class Collect:
        pad_token_id = 0

        def __init__(self):
            self.i = None

        def decode(self, ids, skip_special_tokens=True):
            return "".join(f"<{i}>" for i in ids)

    rows = [Row(p, SamplingParams(max_tokens=n, temperature=0), lambda text: None,
                lambda reason, n, i=i: outputs[i].append((reason, n))) for i, (p, n) in enumerate(zip(prompts, limits,
                                                                                                   strict=True))]
    streams: dict[int, list[str]] = {i: [] for i in range(len(rows))}
    for i, row in enumerate(rows):
        row.emit = lambda text, i=i: streams[i].append(text)
    with torch.no_grad():
        generate_batch(model, Collect(), rows, seen_rows.append, eos_ids=set(), max_positions=64)
    assert seen_rows[0] == [0, 1, 2] and seen_rows[-1] == [0]  # finished rows left the batch
    for i, (prompt, n) in enumerate(zip(prompts, limits, strict=True)):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            alone = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert "".join(streams[i]) == "".join(f"<{t}>" for t in alone)
        assert outputs[i] == [("length", n)]


def test_rows_joining_a_running_batch_equal_rows_generated_alone():
    """admit() adds rows between steps; their KV caches (another length) are merged into the batch's."""
    from tests.helpers import tiny_llama

    model = tiny_llama()
    prompts = [[5, 9, 11, 40, 41, 42, 43], [7, 3], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 50]]
    limits = [12, 4, 5]
    streams: list[list[int]] = [[] for _ in prompts]

    class Ids:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return "".join(f"<{i}>" for i in ids)

    def row(i: int) -> Row:
        return Row(prompts[i], SamplingParams(max_tokens=limits[i], temperature=0),
                   lambda text, i=i: streams[i].append(text), lambda reason, n: None)

    calls = []

    def admit(live: list[int]) -> list[Row]:
        calls.append(list(live))
        return [row(len(calls) - 1)] if len(calls) in (2, 3) else []  # row 1 joins at step 2, row 2 at step 3

    with torch.no_grad():
        generate_batch(model, Ids(), [row(0)], lambda rows: None, eos_ids=set(), max_positions=64, admit=admit)
    assert calls[2] == [0, 1]  # row 1 was running alongside row 0
    for i, (prompt, n) in enumerate(zip(prompts, limits, strict=True)):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            alone = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert "".join(streams[i]) == "".join(f"<{t}>" for t in alone), i
