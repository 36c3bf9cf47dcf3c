"""Convert a diffusion LoRA between file layouts: diffusers, kohya / A1111, PEFT per-component folders.

  diffusers  OUT/pytorch_lora_weights.safetensors ("unet.<path>.lora_A.weight"; the LoRA configs in its metadata)
  kohya      OUT/lora.safetensors, or OUT itself when it ends in .safetensors ("lora_unet_..." + alpha, ss_* metadata)
  peft       OUT/unet/, OUT/text_encoder/, ...: adapter_config.json + adapter_model.safetensors each

SRC is a file or folder in any of these layouts (told by its keys). The tensors move unchanged; the scaling of
each module (alpha / r) is kept. kohya names hide where a module path has dots: they are read against diffusers'
SD naming, and --base PIPELINE (a pipeline folder or Hub id) is needed only for names outside it, such as the
original LDM UNet names of sd-scripts' SDXL files (input_blocks / output_blocks).
OUT is written aside and renamed into place when complete.

examples:
  lorakit convert runs/sd-lora/adapter my-lora.safetensors --to kohya
  lorakit convert my-lora.safetensors converted --to diffusers --base ./tiny-sd
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lorakit.diffusion.files import FORMATS

    parser.add_argument("src", metavar="SRC", help="the LoRA file or folder to convert")
    parser.add_argument("out", metavar="OUT", help="folder to write (or a .safetensors file, for kohya / diffusers)")
    parser.add_argument("--to", required=True, choices=list(FORMATS), help="the layout to write")
    parser.add_argument("--base", metavar="PIPELINE", help="the pipeline the LoRA is for (to resolve kohya names)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from lorakit.cli.output_dir import check_output, output_directory
    from lorakit.diffusion.files import read_pipeline_adapter, write_pipeline_adapter

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise ConfigError(f"SRC {src} does not exist")
    base = None
    if args.base is not None:
        from lorakit.hf.pipelines import load_pipeline

        base = load_pipeline(args.base)
    adapter = read_pipeline_adapter(src, base=base)  # read and checked before anything is written
    if out.suffix == ".safetensors":
        if args.to == "peft":
            raise ConfigError(f"--to peft writes a folder per component; OUT {out} names a file")
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out} exists; choose another name or pass --overwrite")
        if out.resolve() == src.resolve():
            raise ConfigError(f"OUT {out} is SRC; choose another name")
        written = write_pipeline_adapter(adapter, out, args.to)  # one file, renamed into place
    else:
        check_output(out, args.overwrite, {"SRC": src})
        with output_directory(out) as tmp:
            name = write_pipeline_adapter(adapter, tmp, args.to).relative_to(tmp)
        written = out / name
    parts = ", ".join(f"{n} ({len(p.tensors) // 2} modules)" for n, p in adapter.components.items())
    print(f"lorakit convert: wrote {written} ({args.to}; from {adapter.format}: {parts})")
    return 0
