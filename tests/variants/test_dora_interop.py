"""DoRA adapters move between lorakit and PEFT (use_dora=True) with the same outputs, on every layer type."""

import warnings

import pytest
import torch

import lorakit
from tests.helpers import TinyConvNet, conv_input, logits, tiny_gpt2, tiny_llama, token_ids
from tests.variants.loop import train_steps

peft = pytest.importorskip("peft")

def conv_net() -> TinyConvNet:
    torch.manual_seed(0)  # the same base weights on both sides
    return TinyConvNet()


CASES = {
    "llama": (tiny_llama, ["q_proj", "v_proj", "embed_tokens"]),  # Linear + Embedding
    "gpt2": (tiny_gpt2, ["c_attn", "c_proj"]),  # transformers Conv1D (fan_in_fan_out)
    "conv": (conv_net, ["conv", "conv3d", "conv1d"]),  # Conv2d, Conv3d, Conv1d
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def outputs(model, case: str) -> torch.Tensor:
    if case == "conv":
        with torch.no_grad():
            return model(conv_input())
    return logits(model, token_ids())


def randomize_magnitudes(model) -> None:
    """m != ||W + s·B·A||: otherwise a wrong norm convention could cancel out."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(torch.rand_like(param) + 0.5)


@pytest.mark.parametrize("case", CASES)
def test_lorakit_dora_loads_in_peft_with_same_outputs(case, tmp_path) -> None:
    make, targets = CASES[case]
    model = make().eval()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True,
                                                  init_lora_weights=False))
    randomize_magnitudes(model)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make().eval(), tmp_path).eval()
    torch.testing.assert_close(outputs(theirs, case), outputs(model, case))


@pytest.mark.parametrize("case", CASES)
def test_peft_dora_loads_in_lorakit_with_same_outputs(case, tmp_path) -> None:
    make, targets = CASES[case]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True, init_lora_weights=False)
    theirs = peft.get_peft_model(make().eval(), config)
    randomize_magnitudes(theirs)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(make().eval(), tmp_path)
    torch.testing.assert_close(outputs(ours, case), outputs(theirs.eval(), case))


def test_dora_training_lowers_the_loss_and_merges_to_the_same_model() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True))
    losses = train_steps(model, token_ids(batch=4, seq=16), steps=12, lr=2e-2)
    assert losses[-1] < 0.95 * losses[0]
    model.eval()
    expected = logits(model, token_ids())
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, token_ids()), expected)
