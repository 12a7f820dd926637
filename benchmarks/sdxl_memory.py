"""What one null-text inner step of SDXL keeps for its backward pass, counted on the meta device (no memory,
no compute, no GPU): the released SDXL base UNet (editing.core.sdxl), batch 1, in bf16, the null tokens
requiring grad.

On the meta device scaled-dot-product attention takes its math path, which saves every softmax matrix; the
flash and memory-efficient kernels a CUDA GPU runs in bf16 save only their outputs, so the self-attention
matrices are reported apart and left out of the GPU estimate. With gradient checkpointing the backward
recomputes one checkpointed block at a time; that block's activations come on top and are not counted. The
estimate is unmeasured on a GPU: run a real one with `python -m editing.run --model sdxl-random --dtype bf16`.

    python -m benchmarks.sdxl_memory [--size 1024] [--gradient-checkpointing]
"""
from __future__ import annotations

import argparse

import torch

from editing.core.sdxl import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET

GIB = 2 ** 30
VAE_PARAMS = 83_653_863  # the SDXL VAE, kept in fp32
TEXT_PARAMS = 123_060_480 + 694_659_840  # both text encoders, kept in fp32


def saved_for_backward(size: int, checkpointing: bool = False) -> dict:
    from diffusers import UNet2DConditionModel

    latent = size // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.bfloat16).requires_grad_(False)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        x = torch.zeros(1, 4, latent, latent, dtype=torch.bfloat16)
        tokens = torch.zeros(1, 77, SDXL_TEXT["hidden_size"] + SDXL_TEXT_2["hidden_size"], dtype=torch.bfloat16,
                             requires_grad=True)
        added = {"text_embeds": torch.zeros(1, SDXL_TEXT_2["projection_dim"], dtype=torch.bfloat16),
                 "time_ids": torch.zeros(1, 6, dtype=torch.bfloat16)}
        totals = {"all": 0, "self_attention_matrices": 0}
        sides = {(latent // 2) ** 2, (latent // 4) ** 2}  # SDXL's two attention resolutions

        def pack(t: torch.Tensor) -> torch.Tensor:
            size_bytes = t.numel() * t.element_size()
            totals["all"] += size_bytes
            if t.dim() >= 3 and t.shape[-1] == t.shape[-2] and t.shape[-1] in sides:
                totals["self_attention_matrices"] += size_bytes
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(x, torch.tensor(500), encoder_hidden_states=tokens, added_cond_kwargs=added)
        weights = sum(p.numel() for p in unet.parameters()) * 2
    return {"unet_weights_bf16": weights, **totals}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdxl_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as editing.run's switch")
    args = parser.parse_args()
    size = args.size
    found = saved_for_backward(size, args.gradient_checkpointing)
    flash = found["all"] - found["self_attention_matrices"]
    fixed = found["unet_weights_bf16"] + (VAE_PARAMS + TEXT_PARAMS) * 4
    print(f"SDXL null-text inner step at {size} px, batch 1, bf16, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}:")
    print(f"  saved for backward (math attention): {found['all'] / GIB:.1f} GiB, of which self-attention "
          f"matrices {found['self_attention_matrices'] / GIB:.1f} GiB")
    print(f"  with flash attention (no matrices saved): {flash / GIB:.1f} GiB")
    print(f"  + UNet weights bf16 {found['unet_weights_bf16'] / GIB:.1f} GiB, VAE and text encoders fp32 "
          f"{(VAE_PARAMS + TEXT_PARAMS) * 4 / GIB:.1f} GiB")
    print(f"  estimated GPU peak (flash attention, before workspace): {(flash + fixed) / GIB:.1f} GiB")


if __name__ == "__main__":
    main()
