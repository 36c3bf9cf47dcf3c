"""torch.compile keeps working on an injected model (the model keeps its class; the forward has no graph break).

The "aot_eager" backend traces exactly what inductor would see (dynamo + AOTAutograd) without spending a
minute compiling C++ on a 2-core machine; numerics are then eager's, so outputs must agree to rounding.
"""

import pytest
import torch
from torch import nn

import lorakit
from lorakit.layers.base import AdapterSpec
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from tests.helpers import tiny_llama, token_ids

LAYERS = {
    "linear": (lambda: LoraLinear(nn.Linear(8, 6)), lambda: torch.randn(3, 8)),
    "embedding": (lambda: LoraEmbedding(nn.Embedding(10, 6)), lambda: torch.randint(0, 10, (3, 4))),
    "conv": (lambda: LoraConv(nn.Conv2d(3, 4, 3)), lambda: torch.randn(2, 3, 5, 5)),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_forward_compiles_as_one_graph(kind: str) -> None:
    build, sample = LAYERS[kind]
    layer = build().eval()
    layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=4, lora_dropout=0.1, init_lora_weights=False))
    layer.set_active(["a"])
    x = sample()
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.slow
def test_compiled_tiny_llama_matches_eager_forward_and_backward() -> None:
    model = tiny_llama()
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    lorakit.add_adapter(model, cfg)
    ids = token_ids()
    model(ids, labels=ids).loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    eager_logits = model(ids).logits.detach()
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(ids, labels=ids)
    out.loss.backward()
    torch.testing.assert_close(out.logits.detach(), eager_logits)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)
