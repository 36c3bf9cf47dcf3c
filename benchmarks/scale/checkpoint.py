"""Random-weight Llama checkpoints shaped like real ones, written as a Hub checkpoint is laid out (config.json,
bf16 safetensors shards, model.safetensors.index.json), tensor by tensor: building a 7B one holds one tensor in
memory, not the model. Every tensor is drawn from a generator seeded by its name (norms are ones), so a rebuild
is identical and any two variants read the same weights.

    python -m benchmarks.scale.checkpoint 7b /tmp/llama-7b
"""

from __future__ import annotations

import argparse
import json
import os
import zlib
from pathlib import Path

import torch

from lorakit.io.safetensors_stream import SafetensorsWriter

GiB = 1024**3
# (hidden, intermediate, layers, heads, kv heads, vocab, tied): the shapes of public models of each size
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "tiny": (256, 688, 4, 4, 4, 32000, False),
    "135m": (576, 1536, 30, 9, 3, 49152, True),  # SmolLM2-135M
    "1b": (2048, 5632, 22, 32, 4, 32000, False),  # TinyLlama-1.1B
    "3b": (3200, 8640, 26, 32, 32, 32000, False),  # OpenLLaMA-3B
    "7b": (4096, 11008, 32, 32, 32, 32000, False),  # Llama-2-7B
}
SHARD_BYTES = 5 * GiB  # what save_pretrained / Hub uploads of 7B models use (Llama-3-8B: 4 shards of <= 5 GB)


def llama_config(shape: str) -> dict:
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "tie_word_embeddings": tied, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096, "hidden_act": "silu", "dtype": "bfloat16", "bos_token_id": 1,
        "eos_token_id": 2, "initializer_range": 0.02, "rope_theta": 10000.0,
    }


def tensor_shapes(shape: str) -> dict[str, tuple[int, ...]]:
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    head_dim = hidden // heads
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter)}
    out["model.norm.weight"] = (hidden,)
    if not tied:
        out["lm_head.weight"] = (vocab, hidden)
    return out


def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator).mul_(0.02).to(torch.bfloat16)


def build(shape: str, folder: Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """Writes the checkpoint unless `folder` already holds a complete one of this shape; returns the folder."""
    folder = Path(folder)
    done = folder / ".complete"
    if done.is_file() and done.read_text() == shape:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(shape)
    shards: list[list[str]] = [[]]
    size = 0
    for name, dims in shapes.items():
        nbytes = 2 * int(torch.Size(dims).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, names in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        with open(folder / file, "wb") as handle:
            writer = SafetensorsWriter(handle, {n: (torch.bfloat16, shapes[n]) for n in names}, {"format": "pt"})
            for name in names:
                writer.write(name, draw(name, shapes[name]))
            writer.close()
        weight_map |= dict.fromkeys(names, file)
    total = sum(2 * int(torch.Size(d).numel()) for d in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(llama_config(shape), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    done.write_text(shape)
    return folder


def parameter_count(shape: str) -> int:
    return sum(int(torch.Size(d).numel()) for d in tensor_shapes(shape).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    build(args.shape, args.folder)
    print(f"{args.folder}: {parameter_count(args.shape) / 1e9:.2f}B parameters, "
          f"{sum(f.stat().st_size for f in args.folder.glob('*.safetensors')) / GiB:.1f} GiB in "
          f"{len(list(args.folder.glob('*.safetensors')))} shard(s); pid {os.getpid()}")


if __name__ == "__main__":
    main()
