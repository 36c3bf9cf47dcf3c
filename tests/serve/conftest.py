"""A tiny random Llama, a word-level tokenizer with a chat template, and several adapters, saved in a temp dir;
a live server on 127.0.0.1 for the HTTP tests. Nothing is downloaded."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lorakit

WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang in green trees near old houses "
         "system user assistant : hello world how are you today fine thanks red blue stop here now please tell "
         "me about one two three four five six seven eight nine ten")
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant : {% endif %}")
API_KEY = "test-key"
# name -> (LoraConfig settings); different ranks, targets, DoRA and an embedding adapter
ADAPTERS = {
    "alpha": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "beta": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "gamma": dict(r=2, lora_alpha=4, target_modules="all-linear", use_dora=True),
    "delta": dict(r=16, lora_alpha=8, target_modules=["embed_tokens", "o_proj", "down_proj"]),
}


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@dataclass
class Served:
    base_dir: Path
    adapter_dir: Path
    tokenizer: object
    model: object  # the base model (no adapters)

    def reference(self, adapter: str | None):
        """A fresh copy of the base with `adapter` loaded through the library (for per-request references)."""
        model = copy.deepcopy(self.model)
        if adapter is not None:
            lorakit.load_adapter(model, self.adapter_dir / adapter, adapter_name=adapter)
        return model


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("served")
    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapter_dir = root / "adapters"
    for i, (name, settings) in enumerate(ADAPTERS.items()):
        torch.manual_seed(100 + i)
        adapted = copy.deepcopy(model)
        lorakit.add_adapter(adapted, lorakit.LoraConfig(init_lora_weights=False, **settings), name)
        with torch.no_grad():  # B large enough that every adapter changes the greedy text
            for _, layer in lorakit.inject.lora_layers(adapted):
                for _, b in [layer.lora_weights(name)]:
                    b.mul_(4.0)
        lorakit.save_adapter(adapted, adapter_dir, name)
    return Served(root / "base", adapter_dir, tokenizer, model)


@pytest.fixture(scope="module")
def server(served):
    """The server on 127.0.0.1 (free port), with dynamic batching and an API key for management."""
    from lorakit.serve import BackgroundServer, EngineSettings, ServeConfig, build

    config = ServeConfig(max_resident=3, engine=EngineSettings(max_batch_size=8, batch_window_s=0.05),
                         max_tokens=64, max_request_bytes=64 << 10, api_key=API_KEY)
    app, engine = build(copy.deepcopy(served.model), served.tokenizer, served.adapter_dir, config)
    with BackgroundServer(app, engine) as running:
        yield running


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
