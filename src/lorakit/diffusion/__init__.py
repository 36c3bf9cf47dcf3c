"""Diffusion models (Stable Diffusion-style pipelines from diffusers): LoRA files, use, training helpers."""
