"""The `diffusion:` section of a training config (model.task: text-to-image), and the run's config made concrete.

Imports nothing from diffusers: train/config.py reads this section for every run."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")
DENOISER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections (diffusers' training scripts)
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class DiffusionConfig:
    resolution: int = 512  # images are resized (shorter side) and cropped to resolution x resolution pixels
    center_crop: bool = True  # false: a random crop (chosen once per image when cache_latents is on)
    random_flip: bool = False  # horizontal flips at random; with cache_latents both flips are encoded once
    # data.path as a folder: captions from same-name .txt files, or metadata.jsonl (diffusers' ImageFolder layout)
    image_column: str = "file_name"  # metadata.jsonl: the field naming the image file
    caption_column: str = "text"  # metadata.jsonl: the field holding the caption
    instance_prompt: str | None = None  # the caption of an image that has none (DreamBooth: "a photo of sks dog")
    cache_latents: bool = True  # encode every image through the VAE once (and frozen text embeddings once)
    prediction_type: str = "auto"  # auto: the scheduler's | epsilon | v_prediction
    snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023); 5.0 is the paper's; None: off
    noise_offset: float = 0.0  # adds noise_offset * N(0, 1) per image and channel to the noise; 0: off
    train_text_encoder: bool = False  # also add LoRA to the text encoder(s) and train it
    text_encoder_lr: float | None = None  # the text encoders' LoRA learning rate; None: training.lr
    # the text encoders' LoRA targets (the denoiser's come from the lora: section; default to_q/to_k/to_v/to_out.0)
    text_encoder_targets: list[str] = field(default_factory=lambda: list(TEXT_ENCODER_TARGETS))
    # prior preservation (DreamBooth): images of the class, generated with the base pipeline when fewer exist
    class_data_dir: str | None = None  # None: off
    class_prompt: str | None = None  # the caption of every class image (and the prompt that generates them)
    num_class_images: int = 100  # how many class images the prior term uses
    prior_loss_weight: float = 1.0  # loss = instance loss + prior_loss_weight * class loss
    class_inference_steps: int = 25  # denoising steps of each generated class image
    validation_prompt: str | None = None  # a prompt sampled into <output.dir>/samples/ while training; None: off
    validation_every: int | None = None  # sample every N optimizer steps (and at the end); None: only at the end
    num_validation_images: int = 1  # images per sampling
    validation_inference_steps: int = 25  # denoising steps of each sample

    def __post_init__(self) -> None:
        for name in ("resolution", "num_class_images", "class_inference_steps", "num_validation_images",
                     "validation_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"diffusion.{name}={value!r}: expected a positive integer")
        if self.validation_every is not None and self.validation_every <= 0:
            raise ConfigError(f"diffusion.validation_every={self.validation_every!r}: expected a positive integer "
                              "or null")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"diffusion.prediction_type={self.prediction_type!r}: expected one of "
                              f"{list(PREDICTION_TYPES)}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ConfigError(f"diffusion.snr_gamma={self.snr_gamma!r}: expected a positive number (5.0 is the "
                              "paper's) or null")
        if self.noise_offset < 0 or self.prior_loss_weight < 0:
            raise ConfigError("diffusion.noise_offset and diffusion.prior_loss_weight must be >= 0")
        if self.text_encoder_lr is not None and not self.text_encoder_lr > 0:
            raise ConfigError(f"diffusion.text_encoder_lr={self.text_encoder_lr!r}: expected a positive number "
                              "or null")
        if self.class_data_dir is not None and not self.class_prompt:
            raise ConfigError("diffusion.class_data_dir is set but diffusion.class_prompt is not; prior "
                              "preservation needs the class prompt (e.g. 'a photo of a dog')")
        if not self.text_encoder_targets:
            raise ConfigError("diffusion.text_encoder_targets is empty; name the text encoder layers to adapt "
                              f"(default {TEXT_ENCODER_TARGETS})")


def check_text_to_image(cfg: Any) -> None:
    """Combinations a text-to-image run cannot take (cfg: a TrainConfig), refused before anything loads."""
    if cfg.training.method != "lora":
        raise ConfigError(f"training.method={cfg.training.method} is not available for model.task=text-to-image; "
                          "use training.method=lora")
    if cfg.model.quantization is not None:
        raise ConfigError("model.quantization is not available for model.task=text-to-image; set it to null")
    if cfg.training.metric not in ("auto", "loss"):
        raise ConfigError(f"training.metric={cfg.training.metric!r}: a text-to-image run measures the denoising "
                          "loss; use loss or auto")


def resolve_text_to_image(cfg: Any) -> Any:
    """A copy with absolute local paths (the copy written next to the adapter rebuilds the run from anywhere)."""
    from lorakit.hf.paths import is_hub_id

    cfg = copy.deepcopy(cfg)
    if cfg.data.path is None and cfg.data.train_file is None:
        raise ConfigError("data.path is not set: name a folder of images (captions in same-name .txt files or in "
                          "metadata.jsonl)")
    if cfg.data.path is None:
        cfg.data.path, cfg.data.train_file = cfg.data.train_file, None
    cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    if cfg.data.validation_file is not None:
        cfg.data.validation_file = str(Path(cfg.data.validation_file).expanduser().resolve())
    if cfg.model.path is None:
        raise ConfigError("model.path is not set: name a diffusers pipeline folder (model_index.json) or a Hub id; "
                          "`python -m lorakit.diffusion.tiny DIR` writes a tiny one")
    if not is_hub_id(cfg.model.path):
        cfg.model.path = str(Path(cfg.model.path).expanduser().resolve())
    d = cfg.diffusion
    if d.class_data_dir is not None:
        d.class_data_dir = str(Path(d.class_data_dir).expanduser().resolve())
    return cfg
