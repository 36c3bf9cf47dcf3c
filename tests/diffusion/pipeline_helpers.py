"""Helpers for the tests of adapters in pipelines: adapter files written by diffusers + PEFT (the independent
side), fixed inputs to each component, and a loader into lorakit layers.

lorakit's side loads through lorakit.diffusion.files.load_pipeline_adapter (the one reader).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lorakit.diffusion.files import load_pipeline_adapter

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PROMPT = "a red circle on a blue background"


def write_diffusers_lora(pipe, directory: Path, seed: int, unet_rank: int, unet_alpha: float,
                         text_rank: int | None = None, text_alpha: float | None = None) -> Path:
    """A random LoRA made by PEFT in `pipe` and saved by diffusers' save_lora_weights, with the adapter metadata
    (r, lora_alpha) diffusers reads back; returns the folder. `pipe` keeps empty PEFT wrappers: a throwaway one."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet_config = LoraConfig(r=unet_rank, lora_alpha=unet_alpha, target_modules=UNET_TARGETS, init_lora_weights=False)
    options = {"unet_lora_layers": None, "unet_lora_adapter_metadata": unet_config.to_dict()}
    inject_adapter_in_model(unet_config, pipe.unet, adapter_name="seed")
    options["unet_lora_layers"] = get_peft_model_state_dict(pipe.unet, adapter_name="seed")
    encoders = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    for encoder in encoders if text_rank is not None else []:  # every text encoder of the pipeline (SDXL: two)
        text_config = LoraConfig(r=text_rank, lora_alpha=text_alpha, target_modules=TEXT_TARGETS,
                                 init_lora_weights=False)
        inject_adapter_in_model(text_config, getattr(pipe, encoder), adapter_name="seed")
        options[f"{encoder}_lora_layers"] = get_peft_model_state_dict(getattr(pipe, encoder), adapter_name="seed")
        options[f"{encoder}_lora_adapter_metadata"] = text_config.to_dict()
    type(pipe).save_lora_weights(directory, **options)
    for component in [pipe.unet, *(getattr(pipe, n) for n in encoders)]:  # the next call may use the same name
        for module in component.modules():
            if isinstance(module, BaseTunerLayer) and "seed" in module.lora_A:
                module.delete_adapter("seed")
    return directory


def load_into(pipe, folder: Path, name: str) -> list[str]:
    """Load a diffusers-format adapter file into lorakit layers of `pipe` as adapter `name`."""
    return load_pipeline_adapter(pipe, folder, adapter_name=name)


def unet_output(pipe) -> torch.Tensor:
    """The denoiser's prediction for fixed latents, timestep and text states (SDXL: and added conditions)."""
    gen = torch.Generator().manual_seed(7)
    config = pipe.unet.config
    latents = torch.randn(1, config.in_channels, config.sample_size, config.sample_size, generator=gen)
    states = torch.randn(1, 8, config.cross_attention_dim, generator=gen)
    added = None
    if config.addition_embed_type == "text_time":  # pooled text and 6 size / crop numbers
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(1, pooled, generator=gen), "time_ids": torch.randn(1, 6, generator=gen)}
    with torch.no_grad():
        return pipe.unet(latents, 10, encoder_hidden_states=states, added_cond_kwargs=added).sample


def text_output(pipe, encoder: str = "text_encoder") -> torch.Tensor:
    ids = pipe.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return getattr(pipe, encoder)(ids)[0]


def image(pipe, steps: int = 2) -> torch.Tensor:
    out = pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")
    return torch.from_numpy(out.images)
