"""The real `openai` client against the running server (127.0.0.1): completions, chat, streaming, adapters."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import lorakit
from tests.serve.conftest import ADAPTERS

PROMPTS = ["the cat sat on", "hello world how are", "one two three", "birds sang in green", "tell me about the dog"]


def reference_text(served, adapter: str | None, prompt: str, max_tokens: int) -> str:
    """Greedy text of the same prompt run alone through transformers' generate, with the adapter loaded by lorakit."""
    model = served.reference(adapter)
    ids = served.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=2, pad_token_id=0)
    return served.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_models_lists_base_and_every_adapter(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["base", *sorted(ADAPTERS)]
    assert client.models.retrieve("beta").id == "beta"


@pytest.mark.parametrize("adapter", [None, "alpha", "gamma", "delta"])
def test_completion_equals_the_adapter_run_alone(client, served, adapter):
    result = client.completions.create(model=adapter or "base", prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert result.choices[0].text == reference_text(served, adapter, PROMPTS[0], 6)
    assert result.usage.prompt_tokens == len(served.tokenizer(PROMPTS[0])["input_ids"])
    assert result.usage.completion_tokens <= 6
    assert result.model == (adapter or "base")


def test_adapters_change_the_output(client):
    texts = {m: client.completions.create(model=m, prompt=PROMPTS[1], max_tokens=8, temperature=0).choices[0].text
             for m in ["base", *ADAPTERS]}
    assert len(set(texts.values())) == len(texts), texts


def test_concurrent_requests_are_batched_and_each_row_keeps_its_adapter(client, served, server):
    jobs = [(["base", *ADAPTERS][i % 5], PROMPTS[i % len(PROMPTS)]) for i in range(10)]
    metrics = server.engine.metrics
    rows_before, forwards_before, _ = metrics.summary("lorakit_batch_size")

    def run(job):
        model, prompt = job
        return client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(run, jobs))
    for (model, prompt), text in zip(jobs, texts, strict=True):
        assert text == reference_text(served, None if model == "base" else model, prompt, 5), (model, prompt)
    rows, forwards, _ = metrics.summary("lorakit_batch_size")
    assert (rows - rows_before) / (forwards - forwards_before) > 1.5, "concurrent requests were served one by one"


def test_chat_completion_uses_the_chat_template(client, served):
    messages = [{"role": "system", "content": "fine"}, {"role": "user", "content": "hello world how are you"}]
    result = client.chat.completions.create(model="beta", messages=messages, max_tokens=5, temperature=0)
    text = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert result.usage.prompt_tokens == len(prompt_ids)
    model = served.reference("beta")
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             eos_token_id=2, pad_token_id=0)
    assert result.choices[0].message.content == served.tokenizer.decode(out[0, ids.shape[1]:],
                                                                        skip_special_tokens=True)
    assert result.choices[0].message.role == "assistant"


def test_streaming_completion_and_chat_give_the_same_text(client):
    full = client.completions.create(model="alpha", prompt=PROMPTS[2], max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model="alpha", prompt=PROMPTS[2], max_tokens=8, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    messages = [{"role": "user", "content": "tell me about the park"}]
    chat = client.chat.completions.create(model="gamma", messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model="gamma", messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    parts = list(stream)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == chat.choices[0].message.content
    assert parts[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_stop_strings_and_max_tokens(client):
    free = client.completions.create(model="delta", prompt=PROMPTS[3], max_tokens=12, temperature=0).choices[0]
    words = free.text.split()
    assert len(words) >= 3, free.text
    stopped = client.completions.create(model="delta", prompt=PROMPTS[3], max_tokens=12, temperature=0,
                                        stop=[words[2]]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.find(words[2])]
    short = client.completions.create(model="delta", prompt=PROMPTS[3], max_tokens=2, temperature=0).choices[0]
    assert short.finish_reason == "length" and short.text == " ".join(words[:2])


def test_sampling_with_a_seed_is_reproducible(client):
    settings = dict(model="alpha", prompt=PROMPTS[4], max_tokens=10, temperature=1.5, top_p=0.9, seed=7)
    first = client.completions.create(**settings).choices[0].text
    assert client.completions.create(**settings).choices[0].text == first


def test_weighted_composition_extension(client, served):
    """adapter_weights is the weighted sum of the adapters' outputs: the reference runs both adapters active in the
    library's ordinary forward, each layer's scale multiplied by its weight."""
    one = client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=6, temperature=0,
                                    extra_body={"adapter_weights": {"alpha": 1.0}}).choices[0].text
    assert one == reference_text(served, "alpha", PROMPTS[0], 6)
    weights = {"alpha": 0.5, "delta": -0.75}
    mixed = client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=6, temperature=0,
                                      extra_body={"adapter_weights": [{"name": n, "weight": w}
                                                                      for n, w in weights.items()]})
    model = served.reference("alpha")
    lorakit.load_adapter(model, served.adapter_dir / "delta", adapter_name="delta")
    for _, layer in lorakit.inject.lora_layers(model):
        for name, weight in weights.items():
            if name in layer.r:
                layer.set_scale(name, layer.scaling[name] * weight)
    lorakit.set_adapter(model, list(weights))
    ids = served.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=2, pad_token_id=0)
    assert mixed.choices[0].text == served.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert mixed.choices[0].text != one
