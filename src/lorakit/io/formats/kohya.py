"""kohya-ss / A1111 LoRA files ("LoCon" included). Pure key mappings and the ss_* metadata.

Keys: "<prefix>_<module path with '.' -> '_'>.<role>", roles lora_down.weight (A), lora_up.weight (B) and alpha (a
scalar; scaling = alpha / rank of that module, alpha = rank when absent). Prefixes:

    lora_unet_        the denoiser
    lora_te_          the text encoder of SD 1.x / 2.x
    lora_te1_ / lora_te2_   SDXL's two text encoders

Text-encoder names keep CLIP's "text_model_" (older transformers' CLIPTextModel; newer ones dropped that level).
A convolution's lora_down is a conv with the base's kernel (r, in, kh, kw) and lora_up a 1x1 conv (out, r, 1, 1):
the layout of lorakit's LoraConv. Because '_' is also part of module names, a name maps back to a module path only
against a model's real names (`name_map`), or, without a model, against diffusers' SD naming (`guess_path`).
"""

from __future__ import annotations

import json

import torch

from lorakit.errors import AdapterFileError

TEXT_MODEL = "text_model."
ROLES = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}
# LyCORIS and other kohya-style forms this reader refuses, by a piece of their keys
OTHER_FORMS = {"hada_": "LoHa", "lokr_": "LoKr", "lora_mid": "LoCon with Tucker decomposition (lora_mid)",
               "dora_scale": "DoRA (dora_scale)", "diff": "full weight difference", "oft_": "OFT"}
# the original LDM UNet names of sd-scripts' SDXL files (kohya_ldm.py; diffusers names its blocks down_blocks / ...)
LDM_BLOCKS = ("input_blocks_", "middle_block_", "output_blocks_", "time_embed_", "label_emb_", "out_0", "out_2")


def prefixes(components: list[str], sdxl: bool) -> dict[str, str]:
    """{component: kohya prefix} for a pipeline; SDXL numbers its text encoders."""
    table = {"unet": "lora_unet", "text_encoder": "lora_te1" if sdxl else "lora_te", "text_encoder_2": "lora_te2"}
    missing = [c for c in components if c not in table]
    if missing:
        raise AdapterFileError(f"component(s) {missing} have no kohya name (kohya files hold unet / text encoder "
                               "LoRA of SD 1.x / 2.x / XL); write this adapter as --to diffusers or --to peft")
    return {c: table[c] for c in components}


COMPONENT_OF = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                "lora_te2": "text_encoder_2"}


def kohya_name(component: str, path: str, prefix: str) -> str:
    if component.startswith("text_encoder") and not path.startswith(TEXT_MODEL):
        path = TEXT_MODEL + path
    return f"{prefix}_{path.replace('.', '_')}"


def to_kohya(component: str, prefix: str, tensors: dict[str, torch.Tensor],
             alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """One component's tensors ("<path>.lora_A.weight" ...) and {path: alpha} -> kohya keys."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        path, _, role = key.rpartition(".lora_")
        role = "lora_" + role
        if role not in ("lora_A.weight", "lora_B.weight"):
            raise AdapterFileError(f"{component}.{key}: kohya files hold plain LoRA (lora_down / lora_up) only; "
                                   "write this adapter as --to diffusers or --to peft")
        name = kohya_name(component, path, prefix)
        out[f"{name}.{'lora_down' if role == 'lora_A.weight' else 'lora_up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(alphas[path]), dtype=torch.float32)
    return out


def is_kohya_key(key: str) -> bool:
    return key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"))


def split_key(key: str, source: str) -> tuple[str, str, str]:
    """"lora_unet_down_blocks_0_..._to_q.lora_down.weight" -> ("lora_unet", "down_blocks_0_..._to_q",
    "lora_A.weight")."""
    stem, _, role = key.partition(".")
    for piece, kind in OTHER_FORMS.items():
        if piece in role:
            raise AdapterFileError(f"{source}: tensor {key} is {kind}, a LyCORIS / kohya form lorakit does not read "
                                   "(plain LoRA and LoCon only)")
    if role not in ROLES:
        raise AdapterFileError(f"{source}: tensor {key}: unknown kohya role {role!r} (expected lora_down.weight, "
                               "lora_up.weight or alpha)")
    prefix = next(p for p in ("lora_unet", "lora_te1", "lora_te2", "lora_te") if stem.startswith(p + "_"))
    name = stem[len(prefix) + 1:]
    return prefix, name, ROLES[role]


def split_file(tensors: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{prefix: {kohya module name: {"lora_A.weight": t, "lora_B.weight": t, "alpha": t}}}, checked complete."""
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        prefix, name, role = split_key(key, source)
        out.setdefault(prefix, {}).setdefault(name, {})[role] = tensor
    for prefix, modules in out.items():
        for name, parts in modules.items():
            for role in ("lora_A.weight", "lora_B.weight"):
                if role not in parts:
                    raise AdapterFileError(f"{source}: module {prefix}_{name} has no "
                                           f"{'lora_down' if role == 'lora_A.weight' else 'lora_up'}.weight")
    return out


# -- names back to module paths ------------------------------------------------------------------------------------
def name_map(paths: list[str], text_encoder: bool) -> dict[str, str | None]:
    """{kohya name: module path} for a model's module paths; None marks a name two paths share (ambiguous).
    A text encoder also answers to "text_model_..." when the model has no text_model level."""
    out: dict[str, str | None] = {}
    for path in paths:
        names = [path.replace(".", "_")]
        if text_encoder and not path.startswith(TEXT_MODEL):
            names.append((TEXT_MODEL + path).replace(".", "_"))
        for name in names:
            out[name] = path if out.get(name, path) == path else None
    return out


# Names in diffusers' SD / SDXL UNet and CLIP text encoders that contain "_" (the rest of a path is single words)
COMPOUNDS = (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v",
    "to_out", "conv_in", "conv_out", "conv_shortcut", "conv_norm_out", "time_emb_proj", "time_embedding", "linear_1",
    "linear_2", "add_embedding", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "final_layer_norm", "layer_norm1", "layer_norm2", "text_projection",
)
WORDS = {"attentions", "resnets", "downsamplers", "upsamplers", "conv", "conv1", "conv2", "norm", "norm1", "norm2",
         "norm3", "attn1", "attn2", "ff", "net", "proj", "encoder", "layers", "mlp", "fc1", "fc2"}


def guess_path(name: str) -> str | None:
    """A kohya name as a diffusers SD module path, when every piece is a name diffusers' SD models use; else None."""
    parts, out, i = name.split("_"), [], 0
    while i < len(parts):
        two = "_".join(parts[i:i + 2])
        three = "_".join(parts[i:i + 3])
        if three in COMPOUNDS:
            out.append(three)
            i += 3
        elif two in COMPOUNDS:
            out.append(two)
            i += 2
        elif parts[i] in WORDS or parts[i].isdigit():
            out.append(parts[i])
            i += 1
        else:
            return None
    return ".".join(out)


# -- ss_* metadata ----------------------------------------------------------------------------------------------------
def ss_metadata(ranks: dict[str, int], alphas: dict[str, float], conv_ranks: dict[str, int], base_version: str,
                output_name: str, extra: dict[str, str]) -> dict[str, str]:
    """The metadata kohya's scripts write and A1111 / ComfyUI show (dim and alpha: the most common values)."""
    from collections import Counter

    def common(values):
        return Counter(values).most_common(1)[0][0] if values else None

    dim, alpha = common(list(ranks.values())), common(list(alphas.values()))
    meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(dim), "ss_network_alpha": _number(alpha),
        "ss_base_model_version": base_version, "ss_output_name": output_name, "ss_v2": str(base_version == "sd_v2"),
        "ss_training_comment": "written by lorakit", **extra,
    }
    if conv_ranks:
        conv_dim = common(list(conv_ranks.values()))
        conv_alpha = common([alphas[p] for p in conv_ranks])
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_dim), "conv_alpha": _number(conv_alpha)})
    return meta


def base_model_version(pipeline_class: str, cross_attention_dim: int | None) -> str:
    """kohya's ss_base_model_version, guessed from the pipeline class (SD 2.x: its 1024-wide text encoder)."""
    if "XL" in pipeline_class:
        return "sdxl_base_v1-0"
    return "sd_v2" if cross_attention_dim == 1024 else "sd_v1"


def _number(value: float | None) -> str:
    if value is None:
        return "None"
    return str(int(value)) if float(value).is_integer() else str(float(value))
