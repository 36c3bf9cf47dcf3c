"""Padding-free packing of causal-LM examples: several whole examples per block of at most max_seq_len tokens,
with nothing passing between them, so each example's loss is the one it has alone.

What keeps the examples of a block apart:
- position_ids restart at 0 where each example starts, so every example sees its own positions (rotary or
  learned), as if it were alone;
- the model gets those position_ids and no attention_mask (tasks.CausalLM), and no cache: transformers then
  reads the restarts as sequence boundaries and builds a block-diagonal causal mask (masking_utils,
  find_packed_sequence_indices; sdpa and eager tested), and flash attention splits the block at them (by
  transformers' docs; untested here: no GPU). With a cache, or with any attention_mask, transformers skips that
  detection and the examples see each other. A model whose attention ignores it (ALiBi, a recurrent state) is
  refused before training by tasks.CausalLM.check_packing;
- the label of each example's first token is IGNORE. The causal loss shifts (position t predicts label t+1), so
  that label is the target of the previous example's last token, a prediction the example alone never makes.
  (An example's first label is never a target of its own, so nothing the example trains on is lost.)

tests/train/test_packing.py checks that a block's summed loss and each example's logits equal those of the
examples run one by one.

Blocks are filled best-fit: each example, in order, goes into the open block with the least room that still
holds it, or opens a new block. An example longer than a block is cut at the end, as it is without packing.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

IGNORE = -100  # same as data.IGNORE (torch's cross_entropy ignore_index); not imported: data.py imports this module


@dataclass
class Packed:
    blocks: list[dict] = field(default_factory=list)  # {"input_ids", "attention_mask", "labels", "position_ids"}
    truncated: int = 0  # examples longer than a block, cut at the end
    dropped: int = 0  # cut examples with no trained token left (left out, as without packing)


def pack_examples(examples: Sequence[Mapping[str, Sequence[int]]], block: int) -> Packed:
    """Whole causal-LM examples ({"input_ids", "labels"}) packed into blocks of at most `block` tokens (module doc)."""
    if block < 1:
        raise ValueError(f"block={block}: expected at least 1 token")
    truncated = dropped = 0
    kept = []  # (example, tokens kept): the examples are not copied until their block is assembled
    for example in examples:
        size = len(example["input_ids"])
        if size > block:
            truncated += 1
            if all(t == IGNORE for t in example["labels"][:block]):
                dropped += 1
                continue
            size = block
        if size:
            kept.append((example, size))
    return Packed(_assemble(_best_fit(kept, block)), truncated, dropped)


def _best_fit(kept: list[tuple[Mapping, int]], block: int) -> list[list[tuple[Mapping, int]]]:
    """The examples of each block, in order: each example goes into the open block with the least room that
    still holds it, else into a new block."""
    groups: list[list[tuple[Mapping, int]]] = []
    shortest = min((size for _, size in kept), default=0)
    rooms: list[tuple[int, int]] = []  # (room left, block index), sorted: blocks that can still take an example
    for example, size in kept:
        at = bisect.bisect_left(rooms, (size, -1))
        if at == len(rooms):
            room, index = block, len(groups)
            groups.append([])
        else:
            room, index = rooms.pop(at)
        groups[index].append((example, size))
        room -= size
        if room >= shortest:  # a block with less room than the shortest example is full
            bisect.insort(rooms, (room, index))
    return groups


def _assemble(groups: list[list[tuple[Mapping, int]]]) -> list[dict]:
    blocks = []
    for group in groups:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for example, size in group:
            ids += example["input_ids"][:size]
            labels.append(IGNORE)  # no target for the previous example's last token
            labels += example["labels"][1:size]
            positions += range(size)
        blocks.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
                       "position_ids": positions})
    return blocks


def padded_positions(positions: Sequence[int], width: int) -> list[int]:
    """Position ids of a block padded on the right to `width`: the padding continues the last example's count,
    so it joins that example (which never attends to it: it comes later) instead of starting new ones."""
    last = positions[-1] if positions else -1
    return [*positions, *range(last + 1, last + 1 + width - len(positions))]
