"""Sample images of diffusion.validation_prompt while training: <output.dir>/samples/step-00000010-0.png.

The same seed every time, so the images of successive steps differ only by what the adapter learned."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from lorakit.io.atomic import replace_files


def write_samples(pipe, components: dict[str, torch.nn.Module], out: Path, step: int, prompt: str, count: int,
                  resolution: int, steps: int, seed: int) -> list[Path]:
    """Generate `count` images of `prompt` with the adapters as they are now; each PNG written atomically."""
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    modes = {name: module.training for name, module in components.items()}
    for module in components.values():
        module.eval()  # no LoRA dropout while sampling
    try:
        with torch.no_grad():
            images = pipe(prompt, num_inference_steps=steps, height=resolution, width=resolution,
                          num_images_per_prompt=count, generator=torch.Generator().manual_seed(seed)).images
    finally:
        for name, module in components.items():
            module.train(modes[name])
    files = {}
    for k, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files[f"step-{step:08d}-{k}.png"] = buffer.getvalue()
    replace_files(folder, files)
    return [folder / name for name in files]
