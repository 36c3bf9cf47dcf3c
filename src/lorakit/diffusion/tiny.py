"""Tiny random diffusers pipelines built from configs, written as a pipeline folder (model_index.json, one
sub-folder per component), exactly as `DiffusionPipeline.save_pretrained` lays out a real Stable Diffusion one.

No Stable Diffusion weights can be had offline; these stand in for them in tests, examples and the demo:

    python -m lorakit.diffusion.tiny tiny-sd                 # SD 1.x-shaped: UNet2DConditionModel + CLIP + VAE
    python -m lorakit.diffusion.tiny tiny-sdxl --arch sdxl   # SDXL-shaped: two text encoders, added conditions

The tokenizer is a real `CLIPTokenizer` whose BPE merges spell out a small vocabulary of whole words (the words of
`words` plus common ones), so prompts tokenize into words as a real CLIP tokenizer does.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch

COMMON_WORDS = (
    "a an the of on in with and photo picture drawing image painting style shape small big bright dark "
    "red green blue yellow white black orange purple circle square triangle cross ring star background "
    "sks dog cat person object"
)
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def build_clip_tokenizer(directory: Path, words: Iterable[str] = (), max_length: int = 16):
    """A CLIPTokenizer (vocab.json + merges.txt) in `directory`: every byte as a token, and merges that join each
    word of the vocabulary into one token (unknown words fall back to pieces, as in CLIP)."""
    from transformers import CLIPTokenizer

    chars = _byte_characters()
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    words_in = list(dict.fromkeys(re.findall(r"[a-z0-9]+", " ".join([COMMON_WORDS, *words]).lower())))
    merges = _whole_word_merges(words_in)
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for token in SPECIAL:
        vocab.setdefault(token, len(vocab))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=max_length, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)
    return tokenizer


def _whole_word_merges(words: list[str]) -> list[str]:
    """BPE merges, learnt by the `tokenizers` trainer on the words themselves, so that applying them (in rank
    order, as CLIP does) joins each word into one token; hand-written chains conflict (`b r` of "bright" splits
    "zebra")."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, end_of_word_suffix="</w>", show_progress=False)
    core.train_from_iterator(words, trainer)
    return [" ".join(pair) if isinstance(pair, list | tuple) else pair
            for pair in json.loads(core.to_str())["model"]["merges"]]


def _byte_characters() -> list[str]:
    """GPT-2 / CLIP's printable stand-in for each of the 256 bytes (the alphabet every byte-level BPE starts from)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(extra)) for b in range(256)]


def _text_encoder(vocab_size: int, hidden: int, layers: int, projection: bool, max_length: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=max_length, projection_dim=hidden,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(channels: tuple[int, ...], latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=list(channels),
        down_block_types=["DownEncoderBlock2D"] * len(channels), up_block_types=["UpDecoderBlock2D"] * len(channels),
        layers_per_block=1, norm_num_groups=min(channels), sample_size=32,
    )


def _scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, prediction_type=prediction_type, steps_offset=1)


def build_tiny_sd(directory: str | Path, words: Iterable[str] = (), seed: int = 0, channels: tuple[int, ...] = (32, 64),
                  vae_channels: tuple[int, ...] = (16, 32), text_hidden: int = 32, prediction_type: str = "epsilon",
                  sample_size: int = 16, max_length: int = 16) -> Path:
    """An SD 1.x/2.x-shaped StableDiffusionPipeline folder with random weights. Latents are `sample_size` square;
    images are sample_size * 2 ** (len(vae_channels) - 1) pixels."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(directory / "_tokenizer", words, max_length)
    text_encoder = _text_encoder(len(tokenizer), text_hidden, 2, projection=False, max_length=max_length)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_hidden, attention_head_dim=8, norm_num_groups=min(8, min(channels)),
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_vae(vae_channels), text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    _remove_tree(directory / "_tokenizer")
    return directory


def build_tiny_sdxl(directory: str | Path, words: Iterable[str] = (), seed: int = 0,
                    channels: tuple[int, ...] = (32, 64), vae_channels: tuple[int, ...] = (16, 32),
                    text_hidden: int = 32, prediction_type: str = "epsilon", sample_size: int = 16,
                    max_length: int = 16) -> Path:
    """An SDXL-shaped StableDiffusionXLPipeline folder: two CLIP text encoders (the second with a projection, whose
    pooled output and the size / crop conditions enter the UNet through `added_cond_kwargs`)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(directory / "_tokenizer", words, max_length)
    text_encoder = _text_encoder(len(tokenizer), text_hidden, 2, projection=False, max_length=max_length)
    text_encoder_2 = _text_encoder(len(tokenizer), text_hidden, 2, projection=True, max_length=max_length)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * text_hidden, attention_head_dim=(2, 4), norm_num_groups=min(8, min(channels)),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + text_hidden, transformer_layers_per_block=(1, 1),
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_vae(vae_channels), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=_scheduler(prediction_type),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(directory)
    _remove_tree(directory / "_tokenizer")
    return directory


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


BUILDERS = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.diffusion.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--arch", choices=sorted(BUILDERS), default="sd")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = BUILDERS[args.arch](args.directory, seed=args.seed, prediction_type=args.prediction_type)
    print(f"wrote a tiny {args.arch} pipeline to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
