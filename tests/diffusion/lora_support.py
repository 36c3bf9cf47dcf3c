"""Helpers of the diffusion LoRA file tests: tiny pipelines, random adapters, and the outputs compared."""

from __future__ import annotations

from pathlib import Path

import torch

import lorakit

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # diffusers' kohya reader needs out_proj to tell the form


def load(folder: Path):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_random_lora(pipe, text: bool = True, seed: int = 0, unet_config: lorakit.LoraConfig | None = None) -> None:
    """lorakit LoRA with random A and B (B = 0 would hide every mistake): alpha != r, a rank_pattern and an
    alpha_pattern on the UNet, a different alpha / r on each text encoder."""
    torch.manual_seed(seed)
    config = unet_config or lorakit.LoraConfig(
        r=4, lora_alpha=6, target_modules=UNET_TARGETS, init_lora_weights=False,
        rank_pattern={"attn2.to_k": 2}, alpha_pattern={"to_out.0": 3},
    )
    lorakit.add_adapter(pipe.unet, config)
    if text:
        for i, name in enumerate(("text_encoder", "text_encoder_2")):
            module = getattr(pipe, name, None)
            if module is not None:
                lorakit.add_adapter(module, lorakit.LoraConfig(r=2 + i, lora_alpha=5, target_modules=TEXT_TARGETS,
                                                               init_lora_weights=False))


def outputs(pipe, seed: int = 0) -> dict[str, torch.Tensor]:
    """The denoiser's prediction on fixed latents and conditions, and each text encoder's hidden states."""
    gen = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    latents = torch.randn(1, unet.config.in_channels, 16, 16, generator=gen)
    context = torch.randn(1, 16, unet.config.cross_attention_dim, generator=gen)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        added = {"text_embeds": torch.randn(1, pooled, generator=gen),
                 "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    ids = torch.randint(0, pipe.tokenizer.vocab_size - 2, (1, 16), generator=gen)
    with torch.no_grad():
        out = {"unet": unet(latents, 10, context, added_cond_kwargs=added).sample}
        for name in ("text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                out[name] = module(ids)[0]
    return out


def assert_same_outputs(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Max |diff| <= 1e-5 (the brief's bound: two implementations add the same update in another order)."""
    assert got.keys() == want.keys()
    for name in want:
        diff = (got[name] - want[name]).abs().max().item()
        assert diff <= atol, f"{name}: max |diff| {diff}"


def assert_changed(with_lora: dict[str, torch.Tensor], base: dict[str, torch.Tensor], names: list[str]) -> None:
    """The guard: the adapter really moves these outputs (else an equality proves nothing)."""
    for name in names:
        assert (with_lora[name] - base[name]).abs().max().item() > 1e-3, name
