"""Text-to-image LoRA training (`lorakit train` with `model.task: text-to-image`): the `diffusion:` config section
(config.py), the image-folder data (images.py), the VAE latent and text-embedding cache (latents.py), the denoising
loss (loss.py), DreamBooth-style class images (prior.py), sample images (samples.py), a small example image folder
(example_data.py) and the loop (trainer.py, which reuses lorakit.train.trainer's checkpoints, metrics, console and
report; the adapter is written by lorakit.diffusion.files in diffusers' layout)."""
