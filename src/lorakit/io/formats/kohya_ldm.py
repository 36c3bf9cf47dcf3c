"""The original LDM / SGM UNet names of sd-scripts' SDXL kohya files, mapped onto diffusers' UNet2DConditionModel.

sd-scripts trains SDXL on Stability's UNet, whose blocks are numbered in one sequence per side:

    input_blocks.0.0             conv_in
    input_blocks.i.0 / .i.1      down_blocks.b.resnets.l / .attentions.l   (i counts the down blocks' layers in order,
    input_blocks.i.0.op          down_blocks.b.downsamplers.0.conv          a downsampler taking one number after them)
    middle_block.0 / .1 / .2     mid_block.resnets.0 / .attentions.0 / .resnets.1
    output_blocks.o.0 / .o.1     up_blocks.b.resnets.l / .attentions.l
    output_blocks.o.<k>.conv     up_blocks.b.upsamplers.0.conv              (after the block's last layer)
    time_embed.0 / .2, label_emb.0.0 / .2, out.0 / .2   time_embedding.linear_1 / 2, add_embedding.linear_1 / 2,
                                                        conv_norm_out / conv_out
Inside a resnet: in_layers.2 = conv1, out_layers.3 = conv2, emb_layers.1 = time_emb_proj, skip_connection =
conv_shortcut; inside an attention block the names are diffusers' own. The table is built from the UNet at hand
(its blocks and their layers), so it holds for any layers_per_block.
"""

from __future__ import annotations

from torch import nn

RESNET_NAMES = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
                "skip_connection": "conv_shortcut"}
FIXED = {"input_blocks_0_0": "conv_in", "time_embed_0": "time_embedding.linear_1",
         "time_embed_2": "time_embedding.linear_2", "label_emb_0_0": "add_embedding.linear_1",
         "label_emb_0_2": "add_embedding.linear_2", "out_0": "conv_norm_out", "out_2": "conv_out"}


def block_table(unet: nn.Module) -> dict[str, str]:
    """{LDM name prefix, '_'-joined: diffusers module path} for this UNet."""
    table = dict(FIXED)
    i = 1
    for b, block in enumerate(unet.down_blocks):
        for layer in range(len(block.resnets)):
            table[f"input_blocks_{i}_0"] = f"down_blocks.{b}.resnets.{layer}"
            if getattr(block, "attentions", None) is not None:
                table[f"input_blocks_{i}_1"] = f"down_blocks.{b}.attentions.{layer}"
            i += 1
        if getattr(block, "downsamplers", None) is not None:
            table[f"input_blocks_{i}_0_op"] = f"down_blocks.{b}.downsamplers.0.conv"
            i += 1
    mid = unet.mid_block
    if mid is not None:
        table["middle_block_0"] = "mid_block.resnets.0"
        if getattr(mid, "attentions", None) is not None:
            table["middle_block_1"] = "mid_block.attentions.0"
            table["middle_block_2"] = "mid_block.resnets.1"
        else:
            table["middle_block_1"] = "mid_block.resnets.1"
    o = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for layer in range(len(block.resnets)):
            table[f"output_blocks_{o}_0"] = f"up_blocks.{b}.resnets.{layer}"
            if attentions is not None:
                table[f"output_blocks_{o}_1"] = f"up_blocks.{b}.attentions.{layer}"
            if layer == len(block.resnets) - 1 and getattr(block, "upsamplers", None) is not None:
                index = 2 if attentions is not None else 1
                table[f"output_blocks_{o}_{index}_conv"] = f"up_blocks.{b}.upsamplers.0.conv"
            o += 1
    return table


def split_ldm_name(name: str, table: dict[str, str]) -> tuple[str, str] | None:
    """("diffusers block path", the rest of the name in diffusers' spelling) for an LDM name; None if no block fits."""
    best = max((p for p in table if name == p or name.startswith(p + "_")), key=len, default=None)
    if best is None:
        return None
    rest = name[len(best) + 1:]
    if ".resnets." in table[best]:
        rest = RESNET_NAMES.get(rest, rest)
    return table[best], rest
