"""What the denoiser trains on: VAE latents of the images and the text conditioning of the captions.

The VAE is frozen, so an image's latent distribution (mean, std) is computed once (`cache_latents`, both flips when
`random_flip`); each step then samples z = mean + std * N(0, I) from the step's generator, as the VAE's own
`latent_dist.sample()` would, and scales it: (z - shift_factor) * scaling_factor (shift_factor only where the VAE
has one). A frozen text encoder's output is also computed once per caption.

Conditioning, as the pipelines build it:
  SD 1.x / 2.x:  encoder_hidden_states = text_encoder(ids).last_hidden_state
  SDXL:          encoder_hidden_states = concat(text_encoder(ids).hidden_states[-2],
                                                text_encoder_2(ids_2).hidden_states[-2]) on the last dim;
                 added_cond_kwargs = {text_embeds: text_encoder_2's projected pooled output,
                                      time_ids: (original h, w, crop top, left, target h, w)}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.train.diffusion.images import ImageExample, crop_offset, open_image, resized, to_tensor


@dataclass
class Item:
    """One training image: its caption, crop, and (when cached) its latent distribution and text conditioning."""

    example: ImageExample
    top: int
    left: int
    size: tuple[int, int]  # the resized image's (height, width) before cropping (SDXL's "original size")
    mean: torch.Tensor | None = None  # (flips, C, h, w): the latent mean, unflipped first
    std: torch.Tensor | None = None
    cond: dict[str, torch.Tensor] | None = None  # frozen text conditioning of the caption, batch dim dropped


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def text_pairs(pipe) -> list[tuple]:
    """(tokenizer, text encoder) pairs the pipeline conditions on."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if is_sdxl(pipe):
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def encode_text(pipe, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The denoiser's text inputs for `captions` (with gradients when a text encoder trains)."""
    hidden, pooled = [], None
    for tokenizer, encoder in text_pairs(pipe):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        if not is_sdxl(pipe):
            return {"encoder_hidden_states": encoder(ids)[0]}
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # the penultimate layer, as StableDiffusionXLPipeline uses
        pooled = out[0]  # text_encoder_2 comes last: CLIPTextModelWithProjection's text_embeds
    return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}


def time_ids(items: list[Item], resolution: int, device: torch.device) -> torch.Tensor:
    """SDXL's size conditioning: (original h, w, crop top, crop left, target h, w) per image."""
    rows = [[*item.size, item.top, item.left, resolution, resolution] for item in items]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def plan_items(examples: list[ImageExample], resolution: int, center_crop: bool, seed: int) -> list[Item]:
    """Each image's crop, fixed from the seed (a random crop is drawn once per image, so cached and uncached runs
    see the same pixels)."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for example in examples:
        image = resized(open_image(example.path), resolution)  # reads every image now: a bad one fails at start
        top, left = crop_offset(image.size, resolution, center_crop, generator)
        items.append(Item(example, top, left, (image.size[1], image.size[0])))
    return items


def pixels(item: Item, resolution: int, flip: bool) -> torch.Tensor:
    image = resized(open_image(item.example.path), resolution)
    return to_tensor(image, item.top, item.left, resolution, flip)


@torch.no_grad()
def latent_distribution(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE encoder's (mean, std) for a batch of images in [-1, 1]."""
    dist = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean.float().cpu(), dist.std.float().cpu()


def cache_items(pipe, items: list[Item], resolution: int, flips: bool, with_text: bool, device: torch.device,
                batch: int = 8) -> None:
    """Fill in every item's latent distribution (both flips when `flips`) and, `with_text`, its text conditioning."""
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        views = [False, True] if flips else [False]
        for flip_index, flip in enumerate(views):
            mean, std = latent_distribution(pipe.vae, torch.stack([pixels(i, resolution, flip) for i in chunk]))
            for row, item in enumerate(chunk):
                if flip_index == 0:
                    item.mean, item.std = mean[row:row + 1], std[row:row + 1]
                else:
                    item.mean = torch.cat([item.mean, mean[row:row + 1]])
                    item.std = torch.cat([item.std, std[row:row + 1]])
        if with_text:
            with torch.no_grad():
                cond = encode_text(pipe, [i.example.caption for i in chunk], device)
            for row, item in enumerate(chunk):
                item.cond = {k: v[row].detach().cpu() for k, v in cond.items()}


def scaled(vae, z: torch.Tensor) -> torch.Tensor:
    """Latents as the denoiser sees them: (z - shift_factor) * scaling_factor."""
    shift = getattr(vae.config, "shift_factor", None)
    return ((z - shift) if shift is not None else z) * vae.config.scaling_factor


def latents_for(pipe, items: list[Item], flips: list[bool], resolution: int, generator: torch.Generator | None,
                device: torch.device) -> torch.Tensor:
    """Scaled latents of `items` (flipped where `flips` says): sampled from `generator`, or the mean when None."""
    means, stds = [], []
    for item, flip in zip(items, flips, strict=True):
        if item.mean is not None:
            view = 1 if flip and item.mean.shape[0] > 1 else 0
            means.append(item.mean[view])
            stds.append(item.std[view])
        else:
            mean, std = latent_distribution(pipe.vae, pixels(item, resolution, flip)[None])
            means.append(mean[0])
            stds.append(std[0])
    mean, std = torch.stack(means), torch.stack(stds)
    z = mean if generator is None else mean + std * torch.randn(mean.shape, generator=generator)
    return scaled(pipe.vae, z).to(device)


def conditioning(pipe, items: list[Item], resolution: int, device: torch.device, dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """The denoiser's keyword inputs besides the latents and timesteps, for a batch of items, in `dtype`."""
    if all(item.cond is not None for item in items):
        cond = {k: torch.stack([item.cond[k] for item in items]).to(device) for k in items[0].cond}
    else:
        cond = encode_text(pipe, [item.example.caption for item in items], device)
    kwargs: dict = {"encoder_hidden_states": cond["encoder_hidden_states"].to(dtype)}
    if "text_embeds" in cond:
        kwargs["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(dtype),
                                       "time_ids": time_ids(items, resolution, device).to(dtype)}
    return kwargs
