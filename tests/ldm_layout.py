"""Our own writer of the original (CompVis / Stability "LDM") single-file layout, for the checkpoint tests.

diffusers converts LDM -> diffusers when it loads a single file; this is the other direction, written
independently from the LDM module structure (UNet input/middle/output blocks, the VAE's down/mid/up, the
CLIP and OpenCLIP text encoders), so a loaded file that equals the saved one checks both.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP, OPENCLIP = "cond_stage_model.transformer.text_model.", "cond_stage_model.model."
SDXL_CLIP, SDXL_OPENCLIP = "conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL's
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def unet_key(key: str, layers: int = 2, up_attention: tuple[bool, ...] = (False, True, True, True)) -> str:
    """A diffusers UNet2DConditionModel parameter name -> its LDM name. layers: layers_per_block (each LDM
    level has layers + 1 blocks: resnets, then the down- or upsampler); up_attention: which up blocks have
    attention (the upsampler follows it). Defaults: SD 1.x / 2.x."""
    module, _, param = key.rpartition(".")
    if module in UNET_FIXED:
        return UNET + UNET_FIXED[module] + "." + param
    parts = module.split(".")
    block, rest = parts[0], ".".join(parts[4:])
    if block == "down_blocks":
        i, kind, j = int(parts[1]), parts[2], int(parts[3])
        if kind == "downsamplers":
            name = f"input_blocks.{(layers + 1) * (i + 1)}.0.op"
        else:
            name = f"input_blocks.{(layers + 1) * i + j + 1}." + (
                "0." + UNET_RESNET[rest] if kind == "resnets" else "1." + rest)
    elif block == "mid_block":
        kind, j = parts[1], int(parts[2])
        rest = ".".join(parts[3:])
        name = f"middle_block.{2 * j}.{UNET_RESNET[rest]}" if kind == "resnets" else f"middle_block.1.{rest}"
    elif block == "up_blocks":
        i, kind, j = int(parts[1]), parts[2], int(parts[3])
        if kind == "upsamplers":
            name = f"output_blocks.{(layers + 1) * i + layers}.{2 if up_attention[i] else 1}.conv"
        else:
            name = f"output_blocks.{(layers + 1) * i + j}." + (
                "0." + UNET_RESNET[rest] if kind == "resnets" else "1." + rest)
    else:
        raise KeyError(f"no LDM name for UNet parameter {key}")
    return UNET + name + "." + param


def vae_key(key: str, levels: int = 4) -> str:
    """A diffusers AutoencoderKL parameter name -> its LDM name (the decoder's levels count upwards)."""
    module, _, param = key.rpartition(".")
    parts = module.split(".")
    side = parts[0]
    if side in ("quant_conv", "post_quant_conv") or parts[1:] in (["conv_in"], ["conv_out"]):
        name = module
    elif parts[1:] == ["conv_norm_out"]:
        name = f"{side}.norm_out"
    elif parts[1] == "mid_block":
        rest = ".".join(parts[4:])
        name = (f"{side}.mid.block_{int(parts[3]) + 1}.{VAE_RESNET[rest]}" if parts[2] == "resnets"
                else f"{side}.mid.attn_1.{VAE_ATTENTION[rest]}")
    elif parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2])
        level, where = (i, "down") if parts[1] == "down_blocks" else (levels - 1 - i, "up")
        if parts[3] == "resnets":
            name = f"{side}.{where}.{level}.block.{parts[4]}.{VAE_RESNET['.'.join(parts[5:])]}"
        else:
            name = f"{side}.{where}.{level}.{'downsample' if where == 'down' else 'upsample'}.conv"
    else:
        raise KeyError(f"no LDM name for VAE parameter {key}")
    return VAE + name + "." + param


def unet_to_ldm(unet) -> dict:
    layers, up = unet.config.layers_per_block, unet.config.up_block_types
    up_attention = tuple("CrossAttn" in kind for kind in up)
    return {unet_key(k, layers, up_attention): v for k, v in unet.state_dict().items()}


def vae_to_ldm(vae) -> dict:
    out, levels = {}, len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        if ".mid_block.attentions." in k and v.dim() == 2:  # LDM's attention projections are 1x1 convolutions
            v = v[:, :, None, None]
        out[vae_key(k, levels)] = v
    return out


def clip_to_ldm(text_encoder) -> dict:
    """SD 1.x: OpenAI CLIP under the transformers names, with LDM's prefix."""
    out = {CLIP + k: v for k, v in text_encoder.state_dict().items()}
    out[CLIP + "embeddings.position_ids"] = torch.arange(text_encoder.config.max_position_embeddings)[None]
    return out


def openclip_to_ldm(text_encoder, extra_layer: bool = True) -> dict:
    """SD 2.x: OpenCLIP's own names (fused q/k/v in_proj); the released file also has a 24th layer and the
    text projection, which SD 2 does not use."""
    state = text_encoder.state_dict()
    out = {OPENCLIP + "token_embedding.weight": state["embeddings.token_embedding.weight"],
           OPENCLIP + "positional_embedding": state["embeddings.position_embedding.weight"],
           OPENCLIP + "ln_final.weight": state["final_layer_norm.weight"],
           OPENCLIP + "ln_final.bias": state["final_layer_norm.bias"]}
    layers = text_encoder.config.num_hidden_layers
    for n in range(layers):
        src, dst = f"encoder.layers.{n}.", f"{OPENCLIP}transformer.resblocks.{n}."
        for p in ("weight", "bias"):
            out[dst + f"attn.in_proj_{p}"] = torch.cat([state[src + f"self_attn.{q}_proj.{p}"] for q in "qkv"])
            for ours, theirs in OPENCLIP_LAYER.items():
                out[dst + f"{theirs}.{p}"] = state[src + f"{ours}.{p}"]
    if extra_layer:
        width = text_encoder.config.hidden_size
        generator = torch.Generator().manual_seed(1)
        for name in [k for k in out if k.startswith(f"{OPENCLIP}transformer.resblocks.0.")]:
            out[name.replace("resblocks.0.", f"resblocks.{layers}.")] = torch.randn(
                out[name].shape, generator=generator)
        out[OPENCLIP + "text_projection"] = torch.randn(width, width, generator=generator)
    return out


def sdxl_to_ldm(components: dict) -> dict:
    """An SDXL base single file (sd_xl_base_1.0.safetensors' layout): CLIP ViT-L under
    conditioner.embedders.0, OpenCLIP bigG under conditioner.embedders.1 with its text projection
    (OpenCLIP multiplies by it from the right: the transpose of the transformers Linear weight)."""
    clip = components["text_encoder"]
    text = {SDXL_CLIP + k.removeprefix("text_model."): v for k, v in clip.state_dict().items()}
    text[SDXL_CLIP + "embeddings.position_ids"] = torch.arange(clip.config.max_position_embeddings)[None]
    big_g = components["text_encoder_2"]
    openclip = openclip_to_ldm(big_g.text_model, extra_layer=False)
    text.update({SDXL_OPENCLIP + k.removeprefix(OPENCLIP): v for k, v in openclip.items()})
    text[SDXL_OPENCLIP + "text_projection"] = big_g.text_projection.weight.T.contiguous()
    return {**unet_to_ldm(components["unet"]), **vae_to_ldm(components["vae"]), **text}


def to_ldm(unet, vae, text_encoder, openclip: bool) -> dict:
    """The whole single-file state dict, with the schedule buffers the released files carry."""
    text = openclip_to_ldm(text_encoder) if openclip else clip_to_ldm(text_encoder)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    buffers = {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **text, **buffers}


def write_safetensors(path: Path, tensors: dict, dtype: torch.dtype | None = None) -> None:
    """A .safetensors file written one tensor at a time (memory: one tensor, not the whole file).
    dtype: cast floating tensors to it (an fp16 release)."""
    header, offset, order = {}, 0, []
    for name, t in tensors.items():
        t_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        size = t.numel() * torch.empty((), dtype=t_dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t_dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        order.append((name, t_dtype))
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, t_dtype in order:
            f.write(tensors[name].detach().to(t_dtype).contiguous().view(torch.uint8).numpy().tobytes())
