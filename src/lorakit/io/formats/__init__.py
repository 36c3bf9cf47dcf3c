"""Adapter file layouts other than PEFT's, as pure key mappings over one typed object (diffusion/files.py):

    diffusers_lora.py   diffusers' pytorch_lora_weights.safetensors: "<component>.<module path>.lora_A.weight"
    kohya.py            kohya-ss / A1111: "lora_unet_<path with _>.lora_down.weight", ".alpha", ss_* metadata
    patterns.py         per-module ranks / alphas -> one LoraConfig (r, lora_alpha + rank_pattern / alpha_pattern)

Each module maps keys and metadata only; reading files, resolving names against a model and writing atomically
happen in lorakit.diffusion.files.
"""
