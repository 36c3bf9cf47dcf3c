"""The server drives transformers' KV cache through the supported calling convention: no deprecation warning from
transformers (its deprecated `past_key_values=` argument goes away in 5.40), and the same tokens as `generate`."""

from __future__ import annotations

import warnings

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.serve.generation import Row, SamplingParams, generate_batch


class Ids:
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"<{i}>" for i in ids)


def generate_quietly(model, prompts: list[list[int]], n: int = 5) -> list[str]:
    """Batched greedy generation through the server's path, with transformers' deprecation warnings as errors."""
    texts: list[list[str]] = [[] for _ in prompts]
    rows = [Row(p, SamplingParams(max_tokens=n, temperature=0), texts[i].append, lambda reason, k: None)
            for i, p in enumerate(prompts)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        generate_batch(model, Ids(), rows, lambda rows: None, eos_ids=set(), max_positions=64)
    return ["".join(t) for t in texts]


def generated_alone(model, prompt: list[int], n: int = 5) -> str:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return "".join(f"<{t}>" for t in out[0, len(prompt):].tolist())


PROMPTS = [[5, 9, 11], [7, 3, 8, 20]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generation_uses_no_deprecated_cache_argument(family):
    from tests.helpers import tiny_gpt2, tiny_llama

    model = tiny_llama() if family == "llama" else tiny_gpt2()
    assert generate_quietly(model, PROMPTS) == [generated_alone(model, p) for p in PROMPTS]


class OldConvention(torch.nn.Module):
    """A model whose forward still names its cache `past_key_values` (remote code, older transformers)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=past_key_values, use_cache=use_cache)


class Passthrough(torch.nn.Module):
    """A wrapper whose forward takes **kwargs: the cache argument is named as the installed transformers names it."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        return self.inner(**kwargs)


@pytest.mark.parametrize("wrapper", [OldConvention, Passthrough])
def test_models_with_another_forward_signature_still_get_their_cache(wrapper):
    from tests.helpers import tiny_llama

    model = tiny_llama()
    assert generate_quietly(wrapper(model), PROMPTS) == [generated_alone(model, p) for p in PROMPTS]


def test_a_model_that_ignores_the_cache_is_refused_not_served_wrong():
    from tests.helpers import tiny_llama

    class Forgetful(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    with pytest.raises(LorakitError, match="did not fill the KV cache"):
        generate_quietly(Forgetful(tiny_llama()), PROMPTS)
