"""Token generation for a batch of rows: sampling (temperature, top_p, seed), stop strings, max_tokens, and a KV
cache (transformers' DynamicCache, passed as `cache=`). Rows that finish leave the batch at once (their KV cache rows
and plan rows are dropped), so the batch only ever computes live rows. A row whose own work fails (its set-up, its
sampling, its text) leaves the same way and is handed its exception; the other rows go on.

Prompts are left-padded; position ids count real tokens only, so a row's tokens are those it gets when run alone.
"""

from __future__ import annotations

import inspect
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # nucleus: sample from the smallest set of tokens whose probability reaches top_p
    stop: list[str] = field(default_factory=list)  # generation ends before the first of these strings
    seed: int | None = None  # per-request generator: the same seed gives the same text whatever the batch


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from a (vocab,) row of logits."""
    if params.temperature <= 0:
        return int(logits.argmax())
    logits = logits.float()
    # shifted so the top logit is 0, and the temperature kept a normal float32: a tiny temperature then sends the
    # others to -inf (the greedy limit), where logits / temperature overflowed to inf - inf (or 0 / 0) = NaN
    temperature = max(params.temperature, torch.finfo(torch.float32).tiny)
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= params.top_p] = 0  # keeps the top token always
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Detokenizes one row incrementally; finds stop strings; holds back text that may still become one."""

    def __init__(self, tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters already handed out
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; returns (new text to send, whether a stop string ended the row)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = text[:min(hits)]
            return self._delta(len(self.text)), True
        self.text = text
        safe = len(text.rstrip("\ufffd"))  # an incomplete multi-byte character is not text yet
        for s in self.stop:  # a tail that is the start of a stop string waits for the next token
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return self._delta(safe), False

    def flush(self) -> str:
        """Everything not yet sent (at the end of the row)."""
        return self._delta(len(self.text.rstrip("\ufffd")))

    def _delta(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:upto], upto
        return delta


@dataclass
class Row:
    """One request's row in a batch. `emit(text)` receives text as it is produced, `finish(reason, n)` once."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[str], None]
    finish: Callable[[str, int], None]  # (finish_reason: "stop" | "length", completion tokens)
    cancelled: Callable[[], bool] = lambda: False
    fail: Callable[[Exception], None] | None = None  # the row failed alone; None: the exception fails the batch
    generated: int = 0
    done: bool = False


def generate_batch(model, tokenizer, rows: Sequence[Row], set_rows: Callable[[list[int]], None],
                   eos_ids: set[int], max_positions: int | None,
                   admit: Callable[[list[int]], list[Row]] | None = None) -> None:
    """Generate for all rows together until every row is done.

    `set_rows(indices)` is told which rows (indices into the rows seen so far, in order) the next forward computes,
    so the caller can set the matching mixed-adapter plan. `admit(live indices)` is asked between steps for new rows
    to join the running batch (continuous batching): they are prefilled on their own and their KV cache merged in."""
    batch = RunningBatch(model, tokenizer, set_rows, eos_ids, max_positions)
    batch.add(list(rows))
    while True:
        tokens = batch.sample()
        joining = admit(list(batch.live)) if admit is not None and batch.mergeable() else []
        if not batch.live and not joining:
            return
        if batch.live:
            batch.forward(tokens)
        if joining:
            batch.add(joining)


class RunningBatch:
    """The rows being generated, their KV cache (rows, heads, positions, dim), attention mask and next logits.

    Rows are left-padded to a common cache length; position ids count real tokens only."""

    def __init__(self, model, tokenizer, set_rows, eos_ids: set[int], max_positions: int | None) -> None:
        self.model, self.tokenizer, self.set_rows = model, tokenizer, set_rows
        self.eos_ids, self.max_positions = eos_ids, max_positions
        self.device = next(model.parameters()).device
        self.cache_arg = cache_argument(model)
        self.rows: list[Row] = []
        self.streams: list[TextStream | None] = []  # None: the row failed in its set-up
        self.generators: list[torch.Generator | None] = []
        self.live: list[int] = []  # indices into self.rows, in batch order
        self.cache = self.mask = self.next_pos = self.logits = None

    def add(self, rows: list[Row]) -> None:
        """Set up and prefill `rows`, then append them to the batch (a row whose set-up fails is failed alone)."""
        from transformers import DynamicCache

        ready = []
        for row in rows:
            self.rows.append(row)
            stream = generator = None
            try:
                stream, generator = TextStream(self.tokenizer, row.params.stop), _generator(row.params.seed)
                ready.append(len(self.rows) - 1)
            except Exception as exc:
                self._fail(row, exc)
            self.streams.append(stream)
            self.generators.append(generator)
        if not ready:
            return
        ids, mask = _left_pad([self.rows[i].prompt_ids for i in ready], self.tokenizer, self.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self.set_rows(ready)
        cache = DynamicCache()
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            **{self.cache_arg: cache}).logits[:, -1]  # (rows, vocab)
        if getattr(cache, "layers", None) == []:  # filled lazily: a forward that ignored it would decode blind
            raise LorakitError(f"{type(self.model).__name__} did not fill the KV cache passed as `{self.cache_arg}=`; "
                               "serving needs a forward that takes transformers' `cache` (or `past_key_values`)")
        if not self.live:
            self.cache, self.mask, self.next_pos, self.logits = cache, mask, positions[:, -1:] + 1, logits
        else:  # continuous batching: left-pad the shorter cache, then stack the rows
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
                old.values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)])
            self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
            self.next_pos = torch.cat([self.next_pos, positions[:, -1:] + 1])
            self.logits = torch.cat([self.logits, logits])
        self.live += ready

    def mergeable(self) -> bool:
        """Plain per-layer key/value tensors (DynamicCache): rows can join. Sliding-window caches cannot."""
        layers = getattr(self.cache, "layers", None) or []
        return all(isinstance(getattr(layer, "keys", None), torch.Tensor) and not getattr(layer, "is_sliding", False)
                   for layer in layers)

    def sample(self) -> list[int]:
        """Pick each live row's next token, finish the rows that are done and drop them from the batch."""
        tokens, keep = [], []
        for j, i in enumerate(self.live):
            row = self.rows[i]
            if row.cancelled():
                continue
            try:
                token = sample(self.logits[j], row.params, self.generators[i])
                finished = self._finished(row, self.streams[i], token)
            except Exception as exc:  # this row's own failure: it leaves the batch, the others go on
                self._fail(row, exc)
                continue
            if not finished:
                tokens.append(token)
                keep.append(j)
        if len(keep) < len(self.live):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            if keep:
                self.cache.batch_select_indices(index)
            self.mask, self.next_pos = self.mask[index], self.next_pos[index]
            self.live = [self.live[j] for j in keep]
        return tokens

    def _finished(self, row: Row, stream: TextStream, token: int) -> bool:
        reason = None
        if token in self.eos_ids:
            reason = "stop"
        else:
            row.generated += 1
            delta, stopped = stream.push(token)
            if delta:
                row.emit(delta)
            if stopped:
                reason = "stop"
            elif row.generated >= row.params.max_tokens or _context_full(row, self.max_positions):
                reason = "length"
        if reason is None:
            return False
        tail = "" if reason == "stop" and token not in self.eos_ids else stream.flush()
        if tail:
            row.emit(tail)
        row.done = True
        row.finish(reason, row.generated)
        return True

    @staticmethod
    def _fail(row: Row, exc: Exception) -> None:
        if row.fail is None:
            raise exc
        if not row.done:
            row.done = True
            row.fail(exc)

    def forward(self, tokens: list[int]) -> None:
        """One decoding step for the live rows."""
        self.set_rows(self.live)
        step = torch.tensor(tokens, device=self.device)[:, None]  # (rows, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.live), 1)], dim=1)
        self.logits = self.model(input_ids=step, attention_mask=self.mask, position_ids=self.next_pos, use_cache=True,
                                 **{self.cache_arg: self.cache}).logits[:, -1]
        self.next_pos = self.next_pos + 1


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` (transformers >= 5.x; the old `past_key_values`
    is deprecated there and goes away in 5.40) or `past_key_values` (older transformers, remote code). A forward
    that names neither (`**kwargs` wrappers) gets the installed transformers' own convention."""
    params = _parameters(model.forward)
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    from transformers import GenerationMixin

    return "cache" if "cache" in _parameters(GenerationMixin.prepare_inputs_for_generation) else "past_key_values"


def _parameters(function) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin or compiled callable without a signature
        return set()


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _context_full(row: Row, max_positions: int | None) -> bool:
    return max_positions is not None and len(row.prompt_ids) + row.generated >= max_positions


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))  # never reseeds torch's global RNG
    return generator


def _left_pad(prompts: Sequence[list[int]], tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    if any(not p for p in prompts):
        raise LorakitError("a prompt has no tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a row: the tokenizer's EOS and the model's generation_config.eos_token_id."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def prompt_ids_for_chat(tokenizer, messages: list[dict]) -> list[int]:
    """The chat template applied with the assistant turn opened, tokenized."""
    if not getattr(tokenizer, "chat_template", None):
        raise LorakitError("this model's tokenizer has no chat template; use /v1/completions with a plain prompt")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def max_positions_of(model) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 and not math.isinf(value) else None
