"""Train the embedded default model: a small Stable-Diffusion-shaped text-to-image model on the toy world.

    python -m toyworld.train --out toyworld/model            # the default model (see toyworld/TRAINING.md)
    python -m toyworld.train --out /tmp/tw-smoke --vae-steps 40 --unet-steps 40 --n-train 2000 --n-eval 16

Stages, seeded and counted in steps, on the CPU unless `--device cuda` (the same command and thread count gives
the same model on the CPU; every random draw is made on the CPU, so a GPU run sees the same samples):

1. render the training set (`--n-train` scenes) and held-out scenes once, kept as uint8 arrays in memory;
2. train an AutoencoderKL (64x64 RGB -> 16x16x4 latents, factor 4) on random 32x32 crops, then on whole
   images (the autoencoder is fully convolutional: no mid-block attention, so crops teach it what full
   images need at a quarter of the cost);
3. encode the training set once (posterior means), measure the latents' std: `scaling_factor = 1 / std`;
4. train the UNet2DConditionModel (cross-attention at 16x16 and 8x8) and the CLIPTextModel (real CLIP BPE
   tokenizer) jointly on the cached latents: epsilon prediction under SD's scaled-linear schedule,
   min-SNR-5 loss weights, 10 % of captions dropped to "" (classifier-free guidance), AdamW (weight decay on
   the >= 2-D weights only), linear warm-up then cosine decay (diffusers.optimization), an EMA of both
   networks' weights (diffusers.training_utils.EMAModel: what is saved);
5. save the pipeline in diffusers format (weights in fp16, loaded back in fp32) to `OUT.tmp-<pid>`, check it
   loads through `editing.core.model.load_model` and `StableDiffusionPipeline.from_pretrained`, score it (VAE
   PSNR on held-out renders; text-to-image attribute accuracy with the checker, DDIM 50 steps, CFG 7.5),
   write `training.json`, then rename the folder to OUT (replacing an older one).

Continuing a run: `--init-from DIR` loads the VAE, UNet and text encoder of a saved model folder (fp16 on disk,
trained in fp32), keeps the VAE frozen with its scaling factor (stage 2 is skipped), and trains the UNet and
text encoder `--unet-steps` more steps with the same recipe (a new warm-up + cosine, the EMA starting from the
loaded weights). `training.json` records the parent's command, steps and figures (`lineage`) and the total steps.

A killed run: every `--checkpoint-every` UNet steps the stage's whole state is saved to `OUT.checkpoint/`
(toyworld/checkpoint.py); the same command again continues from it and ends with the same weights, bit for
bit, as a run that was never stopped (`--threads` and `--device` may change, at the cost of rounding).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from editing.core.errors import UserError
from editing.core.loading import load_model
from editing.core.model import TOKENIZER_DIR, ddim_scheduler
from editing.core.metrics import psnr, psnr_from_mse
from toyworld.checker import accuracy
from toyworld.attention_loss import localisation_loss, recorded_forward, scene_regions, token_regions
from toyworld.checkpoint import DEFAULT_EVERY, UNetCheckpoint
from toyworld.edit_pairs import pair_rows, pair_target, twin_scenes
from toyworld.local_words import localise_words
from toyworld.world import caption, iter_dataset, random_scene, render

MAX_FOLDER_MB = 30.0  # the default model lives in the repo: keep it small
EMPTY_PROMPT = ""  # caption dropout target; also the negative prompt of classifier-free guidance


@dataclass
class Config:
    """Everything that defines a run; saved in training.json. Defaults are the default model's settings."""

    seed: int = 0
    threads: int = 2  # torch intra-op threads; results are bit-identical only for the same count
    # data
    n_train: int = 30_000  # pre-rendered training scenes (uint8, ~370 MB in memory; ~4.5 epochs of the UNet)
    two_shapes_prob: float = 0.1  # a small share of two-shape scenes teaches "X and Y on Z" captions
    turned_prob: float = 0.0  # share of shapes turned by a random angle (0: the upright world of the first models)
    n_eval_vae: int = 200  # held-out renders for the VAE PSNR
    n_eval: int = 100  # held-out one-shape captions for the attribute accuracy
    # autoencoder: 64x64x3 -> 16x16x4 (one level per channel count: the factor is 2 ** (levels - 1))
    vae_channels: tuple = (32, 32, 64)
    vae_layers_per_block: int = 1
    vae_steps: int = 1500  # total steps; the first vae_crop_frac of them on crops
    vae_crop_frac: float = 0.85
    vae_crop: int = 32  # crop side (px), offsets on the 4-px latent grid
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-5  # per latent element; small, keeps the latents bounded
    # text encoder
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    # UNet on 16x16x4 latents
    unet_channels: tuple = (48, 96, 96)
    unet_heads: tuple = (2, 4, 4)  # diffusers' attention_head_dim = number of heads; head dim 24 (8 heads: 1.7x slower on CPU)
    # attention at a level or not, finest first (diffusers' CrossAttnDownBlock2D or DownBlock2D, mirrored going up)
    unet_attention: tuple = (True, True, False)
    unet_layers_per_block: int = 1
    unet_steps: int = 2100
    unet_batch: int = 64
    unet_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    caption_dropout: float = 0.1
    # weight of the cross-attention localisation loss (toyworld/attention_loss.py; 0: none, runs 1-4)
    attention_loss: float = 0.0
    # share of each batch's rows that are edit pairs (toyworld/edit_pairs.py; 0: none, runs 1-4)
    edit_pairs: float = 0.0
    # the text encoder's self-attention off, so each token carries its own word only (toyworld/local_words.py;
    # False: runs 1-4); a continuation of a model trained so keeps it
    local_words: bool = False
    min_snr_gamma: float = 5.0
    # training timesteps: each uniform draw t is moved to the timestep whose SNR is SNR(t) / timestep_shift, so
    # shift > 1 trains on more noise (larger latents keep more of an image at a given t; 1: uniform, runs 1-4)
    timestep_shift: float = 1.0
    ema_decay: float = 0.999
    # a continuation's EMA warms up as from scratch instead of starting at the parent's weights: for a run that
    # changes what the parent computes (e.g. turns local_words on), whose old weights must not linger
    fresh_ema: bool = False
    grad_clip: float = 1.0
    # evaluation
    eval_steps: int = 50
    eval_guidance: float = 7.5
    # continuation: the folder whose VAE, UNet and text encoder this run starts from (None: from scratch)
    init_from: str | None = None
    # a run from scratch whose text encoder starts from this saved model folder's (None: random, runs 1-4)
    text_encoder_from: str | None = None
    device: str = "cpu"  # where the networks train; only "cpu" with the same threads is bit-reproducible
    # "bf16": the forward passes run under bfloat16 autocast (weights, optimiser, EMA and loss stay fp32); "no":
    # fp32 throughout, the default, since bf16 was 1.32x slower a step on an H200 for these small networks
    mixed_precision: str = "no"

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

@dataclass
class Data:
    images: np.ndarray  # (N, 64, 64, 3) uint8
    captions: list[str]
    scenes: list = field(default_factory=list)


def render_set(seed: int, n: int, two_shapes_prob: float, desc: str, disable: bool = False,
               turned_prob: float = 0.0) -> Data:
    images = np.empty((n, 64, 64, 3), np.uint8)
    captions, scenes = [], []
    it = iter_dataset(seed, n, size=64, two_shapes_prob=two_shapes_prob, turned_prob=turned_prob)
    for i, (scene, image, text) in enumerate(tqdm(it, total=n, desc=desc, disable=disable, **_bar())):
        images[i] = image
        captions.append(text)
        scenes.append(scene)
    return Data(images, captions, scenes)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _bar() -> dict:
    """tqdm settings: lively on a terminal, one line every 30 s in a log file."""
    return {"mininterval": 0.5 if sys.stderr.isatty() else 30.0, "dynamic_ncols": True}


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------

def build_components(cfg: Config, tokenizer):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=cfg.vae_layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=tuple(cfg.vae_channels), norm_num_groups=8, sample_size=64,
        mid_block_add_attention=False)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    attention = tuple(cfg.unet_attention)
    unet = UNet2DConditionModel(
        sample_size=64 // vae_factor(cfg), in_channels=4, out_channels=4, layers_per_block=cfg.unet_layers_per_block,
        block_out_channels=tuple(cfg.unet_channels), norm_num_groups=16,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=tuple(cfg.unet_heads),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)))
    return vae, text_encoder, unet


def vae_factor(cfg: Config) -> int:
    """Image pixels per latent cell along a side: each VAE level after the first halves the image."""
    return 2 ** (len(cfg.vae_channels) - 1)


# --latent-size 32: 64x64 images -> 32x32x4 latents (VAE factor 2), for Prompt-to-Prompt's maps at 32x32. The UNet
# gets a fourth level at 32x32 with attention, so the finest self-attention sees 2-px cells; its channels are
# narrower there (32, one head of 32) to keep a CPU step at ~3x the 16x16 model's (measured: 5.5 s against 1.9 s
# at batch 64 on one thread); the 8x8 and 4x4 levels are the 16x16 model's.
LATENT_SIZES = {
    16: {},
    32: {"vae_channels": (32, 64), "unet_channels": (32, 48, 96, 96), "unet_heads": (1, 2, 4, 4),
         "unet_attention": (True, True, True, False)},
}


def trained_parameters(unet, text_encoder) -> list[torch.nn.Parameter]:
    """What the UNet stage optimises, in the order its EMA keeps them (a checkpoint's ema.safetensors numbers
    them so): the UNet's parameters, then the text encoder's, frozen ones left out."""
    return [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup_frac: float):
    """diffusers' linear warm-up over warmup_frac of the steps, then cosine decay to 0 at `total`."""
    from diffusers.optimization import get_scheduler

    return get_scheduler("cosine", optimizer, num_warmup_steps=max(1, int(round(total * warmup_frac))),
                         num_training_steps=total)


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the >= 2-D weights (linear and convolution kernels, embedding
    tables) only; biases and normalisation scales (1-D) are not pulled towards 0."""
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def make_ema(params: list[torch.nn.Parameter], decay: float, warmup: bool = True):
    """diffusers' EMAModel of `params`. With warmup its decay grows as (1 + n) / (10 + n) up to `decay`; without
    (a continued run, whose starting weights are already an average) it is `decay` from the second step on."""
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay, min_decay=0.0 if warmup else decay, foreach=True)


# ----------------------------------------------------------------------------------------------
# Stage 2: autoencoder
# ----------------------------------------------------------------------------------------------

def train_vae(vae, data: Data, cfg: Config, rng: np.random.Generator, disable: bool) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = warmup_cosine(opt, cfg.vae_steps, cfg.warmup_frac)
    n_crop = int(round(cfg.vae_steps * cfg.vae_crop_frac))
    offsets = np.arange(0, 64 - cfg.vae_crop + 1, vae_factor(cfg))  # crops keep the latent grid's phase
    vae.train()
    smooth, psnr_smooth = None, None
    bar = tqdm(range(cfg.vae_steps), desc="vae", disable=disable, **_bar())
    for step in bar:
        idx = rng.integers(len(data.images), size=cfg.vae_batch)
        batch = data.images[idx]
        if step < n_crop:
            oy, ox = rng.choice(offsets, size=(2, cfg.vae_batch))
            batch = np.stack([b[y:y + cfg.vae_crop, x:x + cfg.vae_crop] for b, y, x in zip(batch, oy, ox)])
        x = to_tensor(batch).to(cfg.device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        loss = mse + F.l1_loss(rec, x) + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        psnr = psnr_from_mse(mse.item(), data_range=2.0)  # pixels in [-1, 1]
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        psnr_smooth = psnr if psnr_smooth is None else 0.98 * psnr_smooth + 0.02 * psnr
        bar.set_postfix(loss=f"{smooth:.4f}", psnr=f"{psnr_smooth:.1f}", kl=f"{kl.item():.2f}",
                        crop="y" if step < n_crop else "n", refresh=False)
    vae.eval()
    return {"loss": smooth, "train_psnr_db": psnr_smooth, "kl_per_element": kl.item()}


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256, disable: bool = False) -> torch.Tensor:
    device = next(vae.parameters()).device
    out = []
    for i in tqdm(range(0, len(images), batch), desc="encode", disable=disable, **_bar()):
        out.append(vae.encode(to_tensor(images[i:i + batch]).to(device)).latent_dist.mean)
    return torch.cat(out)  # (N, 4, 16, 16), unscaled, on the VAE's device


# ----------------------------------------------------------------------------------------------
# Stage 4: UNet + text encoder
# ----------------------------------------------------------------------------------------------

def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """(N, 77) ids, padded like the pipeline pads (to model_max_length); unique captions are tokenized once."""
    unique = sorted(set(texts))
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    row = {t: i for i, t in enumerate(unique)}
    return ids[torch.tensor([row[t] for t in texts])]


def timestep_table(alphas_cumprod: torch.Tensor, shift: float) -> torch.Tensor:
    """(T,) long: for each timestep t, the first timestep whose SNR is at most SNR(t) / shift (the last one where
    none is). Indexing it with uniform draws trains on the schedule's log-SNR moved down by log(shift), as
    "simple diffusion" (Hoogeboom et al., 2023) does for larger images; shift 1 gives every t back."""
    log_snr = (alphas_cumprod / (1 - alphas_cumprod)).log()  # falls with t
    target = log_snr - float(np.log(shift))
    table = torch.searchsorted(-log_snr.contiguous(), -target.contiguous())  # first index with log_snr <= target
    return table.clamp(max=len(log_snr) - 1).long()


SHOW_EVERY = 25  # on a GPU, read the loss back every this many steps: each read waits for the queued work


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x (drawn on the CPU) on device; to a GPU through pinned memory without waiting, so the CPU draws the next
    batch while the GPU trains on this one (a plain copy from pageable memory waits for the GPU)."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def plain_mean(per_sample: torch.Tensor, paired: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The mean loss over the rows that are not edit pairs (all rows when every row is one), on the device."""
    if not (~paired).any() or not paired.any():
        return per_sample.mean()
    plain = to_device((~paired).float(), device)
    return (per_sample * plain).sum() / plain.sum()


def train_unet(unet, text_encoder, latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
               noise_scheduler, cfg: Config, gen: torch.Generator, disable: bool,
               checkpoint: UNetCheckpoint | None = None, vae=None,
               where: tuple[torch.Tensor, torch.Tensor] | None = None,
               twins: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """cfg.unet_steps steps; with a checkpoint, its state is saved every checkpoint.every steps (with the
    frozen vae) and, when one exists, training goes on from its step. where: each scene's token regions
    (N, L) and region maps (N, R, 16, 16), for the localisation loss (cfg.attention_loss > 0). twins: each
    scene's edited twin as scaled latents (N, 4, 16, 16) and caption ids (N, 77), for the edit pairs
    (cfg.edit_pairs > 0). The reported eps_mse is over the plain rows."""
    from diffusers.training_utils import compute_snr

    params = trained_parameters(unet, text_encoder)
    opt = torch.optim.AdamW(decay_groups(params, cfg.weight_decay), lr=cfg.unet_lr)
    sched = warmup_cosine(opt, cfg.unet_steps, cfg.warmup_frac)
    ema = make_ema(params, cfg.ema_decay, warmup=cfg.init_from is None or cfg.fresh_ema)
    device = latents.device
    alphas_cumprod = noise_scheduler.alphas_cumprod.float().to(device)
    snr_table = compute_snr(noise_scheduler, torch.arange(len(alphas_cumprod))).to(device)  # once, not per step
    unet.train()
    text_encoder.train()
    T = len(alphas_cumprod)
    shifted = timestep_table(alphas_cumprod, cfg.timestep_shift)
    networks = {"unet": unet, "text_encoder": text_encoder}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")
    start, smooth, smooth_attention = 0, None, None
    if checkpoint is not None and checkpoint.exists():
        state = checkpoint.restore(networks, opt, sched, ema, gen)
        start, smooth, smooth_attention = state["step"], state["smooth"], state.get("smooth_attention")
        print(f"unet: continuing from the checkpoint at step {start} ({checkpoint.folder})", flush=True)
    smooth = None if smooth is None else torch.tensor(smooth, device=device)  # on the device: no sync per step
    bar = tqdm(range(start, cfg.unet_steps), initial=start, total=cfg.unet_steps, desc="unet", disable=disable,
               **_bar())
    for step in bar:
        # every draw comes from the CPU generator, so a run's samples do not depend on the device
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        on_device = to_device(idx, device)
        z0 = latents[on_device]  # (B, 4, 16, 16), scaled
        tok = ids[idx].clone()  # (B, 77)
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
        paired = torch.zeros(cfg.unet_batch, dtype=torch.bool)
        if twins is not None:
            paired = pair_rows(cfg.unet_batch, cfg.edit_pairs, gen)
            drop &= ~paired
            tok[paired] = twins[1][idx[paired]]
        tok[drop] = empty_ids
        tok = to_device(tok, device)
        t = shifted[to_device(torch.randint(T, (cfg.unet_batch,), generator=gen), device)]
        eps = to_device(torch.randn(z0.shape, generator=gen), device)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps  # q(z_t | z_0)
        with autocast:
            cond = text_encoder(tok)[0]  # (B, 77, hidden), last hidden state as the pipeline uses it
            if cfg.attention_loss > 0:
                pred, maps = recorded_forward(unet, zt, t, cond)
                attention = localisation_loss(maps, where[0][idx].long().to(device), where[1][idx].to(device),
                                              (~drop & ~paired).to(device))  # a twin's caption has other words
            else:
                pred = unet(zt, t, encoder_hidden_states=cond).sample
        pred = pred.float()  # the loss in fp32 whatever the forward ran in
        snr = snr_table[t]
        weight = snr.clamp(max=cfg.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        target = eps
        if paired.any():
            target = torch.where(to_device(paired, device).view(-1, 1, 1, 1),
                                 pair_target(eps, z0, twins[0][on_device], ab), eps)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (weight * per_sample).mean()
        if cfg.attention_loss > 0:
            loss = loss + cfg.attention_loss * attention
            value = attention.item()
            smooth_attention = value if smooth_attention is None else 0.98 * smooth_attention + 0.02 * value
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        ema.step(params)
        raw = plain_mean(per_sample.detach(), paired, device)
        smooth = raw if smooth is None else 0.98 * smooth + 0.02 * raw
        if device.type == "cpu" or (step + 1) % SHOW_EVERY == 0:  # a value shown waits for the GPU
            shown = {"mse": f"{smooth.item():.4f}",
                     **({"where": f"{smooth_attention:.3f}"} if smooth_attention is not None else {})}
            bar.set_postfix(**shown, lr=f"{sched.get_last_lr()[0]:.1e}", refresh=False)
        if checkpoint is not None and checkpoint.due(step + 1, cfg.unet_steps):
            checkpoint.save(step + 1, vae, networks, opt, sched, ema, gen,
                            {"smooth": smooth.item(), "smooth_attention": smooth_attention})
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return {"eps_mse": None if smooth is None else smooth.item(), "resumed_at_step": start,
            **({"attention_loss": smooth_attention} if cfg.attention_loss > 0 else {})}


# ----------------------------------------------------------------------------------------------
# Stage 5: save, reload, score
# ----------------------------------------------------------------------------------------------

def save_pipeline(folder: Path, vae, text_encoder, unet, tokenizer) -> float:
    """Save in diffusers format with fp16 weights; configs say float32 so every loader upcasts."""
    from diffusers import StableDiffusionPipeline

    scheduler = ddim_scheduler()  # SD's schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    scheduler.register_to_config(prediction_type="epsilon")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.to(torch.float32)
    for f in TOKENIZER_DIR.iterdir():  # the real tokenizer files, as shipped with the project
        if f.is_file():
            shutil.copy2(f, folder / "tokenizer" / f.name)
    te_cfg = folder / "text_encoder" / "config.json"  # transformers loads in the stored dtype otherwise
    cfg = json.loads(te_cfg.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in cfg:
            cfg[key] = "float32"
    te_cfg.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for sub in ("unet", "vae"):  # a continuation's loaded components would record the parent's local path
        path = folder / sub / "config.json"
        cfg = json.loads(path.read_text())
        if cfg.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in folder.rglob("*"):  # safetensors are written 0600; the model is shared with the repo
        f.chmod(0o755 if f.is_dir() else 0o644)
    return folder_mb(folder)


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


@torch.no_grad()
def evaluate(folder: Path, cfg: Config, vae_images: np.ndarray, eval_scenes: list, disable: bool) -> dict:
    """Score the saved folder as users load it: VAE round trip through editing.core.model.load_model, and
    text-to-image through StableDiffusionPipeline.from_pretrained with its DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    model = load_model(str(folder), device=cfg.device, dtype="fp32")
    dtypes = {n: str(next(m.parameters()).dtype) for n, m in
              (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoder))}
    recs = np.concatenate([model.decode_latents(model.encode_images(vae_images[i:i + 50]))
                           for i in range(0, len(vae_images), 50)])
    psnrs = np.array([psnr(x, y) for x, y in zip(vae_images, recs)])  # per held-out render

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        local_files_only=True).to(cfg.device)
    assert isinstance(pipe.scheduler, DDIMScheduler), type(pipe.scheduler)
    pipe.set_progress_bar_config(desc="generate", disable=disable, **_bar())
    pipe_dtypes = {n: str(getattr(pipe, n).dtype) for n in ("unet", "vae", "text_encoder")}
    prompts = [caption(s) for s in eval_scenes]
    gen = torch.Generator().manual_seed(cfg.seed)
    images = []
    for i in range(0, len(prompts), 50):
        out = pipe(prompts[i:i + 50], height=64, width=64, num_inference_steps=cfg.eval_steps,
                   guidance_scale=cfg.eval_guidance, generator=gen, output_type="np").images
        images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    images = np.concatenate(images)
    acc = accuracy(images, eval_scenes)
    return {"vae_psnr_db": float(psnrs.mean()), "vae_psnr_db_min": float(psnrs.min()),
            "vae_n": int(len(vae_images)), "attribute_accuracy": acc,
            "eval_sampler": f"DDIM {cfg.eval_steps} steps, guidance {cfg.eval_guidance}",
            "loaded_dtypes_load_model": dtypes, "loaded_dtypes_pipeline": pipe_dtypes,
            "_images": images, "_recs": recs}


def write_preview(path: Path, images: np.ndarray, cols: int = 10) -> None:
    """A contact sheet of generated images (kept in /tmp next to the log, never in the model folder)."""
    import cv2

    n = len(images) // cols * cols
    if n == 0:
        return
    grid = images[:n].reshape(-1, cols, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(-1, cols * 64, 3)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def replace_folder(tmp: Path, out: Path) -> None:
    """tmp -> out, removing an older out; the old folder is moved aside first so out is never half-written."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.tmp-{os.getpid()}-old")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m toyworld.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (the default model, ~75 min on 2 CPU threads):\n"
               "  python -m toyworld.train --out toyworld/model\n"
               "smoke test (~2 min):\n"
               "  python -m toyworld.train --out /tmp/tw-smoke --n-train 2000 --vae-steps 40 "
               "--unet-steps 40 --n-eval 16 --n-eval-vae 50")
    p.add_argument("--out", required=True, help="output folder (written atomically; an older one is replaced)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default %(default)s)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="pre-rendered training scenes")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps)
    p.add_argument("--vae-batch", type=int, default=d.vae_batch)
    p.add_argument("--unet-steps", type=int, default=d.unet_steps)
    p.add_argument("--unet-batch", type=int, default=d.unet_batch)
    p.add_argument("--unet-lr", type=float, default=d.unet_lr,
                   help="peak learning rate of the UNet and text encoder (default %(default)s, chosen at batch 64; "
                        "a larger --unet-batch may take a larger one)")
    p.add_argument("--n-eval", type=int, default=d.n_eval, help="held-out captions for the attribute accuracy")
    p.add_argument("--n-eval-vae", type=int, default=d.n_eval_vae, help="held-out renders for the VAE PSNR")
    p.add_argument("--two-shapes-prob", type=float, default=d.two_shapes_prob,
                   help="share of two-shape training scenes (default %(default)s)")
    p.add_argument("--turned-prob", type=float, default=d.turned_prob,
                   help="share of shapes turned by a random angle (default %(default)s: upright only)")
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout,
                   help="share of UNet steps on the empty prompt, the null branch of guidance (default %(default)s)")
    p.add_argument("--attention-loss", type=float, default=d.attention_loss, metavar="WEIGHT",
                   help="weight of the cross-attention localisation loss: each colour and shape word attends to "
                        "its shape, the background words to the rest (toyworld/attention_loss.py; default "
                        "%(default)s: none)")
    p.add_argument("--edit-pairs", type=float, default=d.edit_pairs, metavar="FRACTION",
                   help="share of each batch's rows that are edit pairs: a scene's noisy latent under its edited "
                        "twin's caption, asked for the twin (toyworld/edit_pairs.py; default %(default)s: none)")
    p.add_argument("--local-words", action="store_true",
                   help="switch the text encoder's self-attention off (zero, frozen output projections): each "
                        "token carries its own word only, so a changed word changes its own token alone "
                        "(toyworld/local_words.py; a continuation of such a model keeps it)")
    p.add_argument("--fresh-ema", action="store_true",
                   help="with --init-from: warm the EMA up as from scratch instead of starting it at the parent's "
                        "weights (for a continuation that changes what the parent computes, e.g. --local-words)")
    p.add_argument("--device", default=d.device,
                   help="cpu (default; bit-reproducible for the same --threads) or cuda: the training steps "
                        "run there, every random draw stays on the CPU")
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=("no", "bf16"),
                   help="bf16: run the forward passes under bfloat16 autocast (weights, optimiser and loss stay "
                        "fp32); changes the weights by rounding only. Measured slower for the world's networks "
                        "on an H200 (TRAINING.md), so off by default (%(default)s)")
    p.add_argument("--preview", default=None, help="PNG contact sheet of the evaluation images (default: none)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="continue from a saved model folder: its VAE (frozen, not retrained), UNet and text "
                        "encoder; --unet-steps more steps with a new warm-up + cosine")
    p.add_argument("--text-encoder-from", default=None, metavar="DIR",
                   help="a run from scratch whose text encoder starts from this saved model folder's (same width "
                        "and depth), trained on with the new UNet: it already tells the world's words apart")
    p.add_argument("--timestep-shift", type=float, default=d.timestep_shift, metavar="S",
                   help="train on more noise: each drawn timestep moves to where the SNR is 1/S of its own "
                        "(default %(default)s: uniform; ~4 suits 32x32 latents, 'simple diffusion')")
    p.add_argument("--checkpoint-every", type=int, default=DEFAULT_EVERY, metavar="STEPS",
                   help="save the UNet stage's state to OUT.checkpoint/ every STEPS steps; the same command "
                        "again continues from it (default %(default)s)")
    p.add_argument("--latent-size", type=int, default=None, choices=sorted(LATENT_SIZES),
                   help="latent side for a run from scratch: 16 (factor-4 VAE, the default model) or 32 (factor-2 "
                        "VAE and a UNet level with attention at 32x32; ~3x the CPU time per UNet step)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    for name in ("threads", "n_train", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "n_eval", "n_eval_vae",
                 "checkpoint_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("two_shapes_prob", "turned_prob", "caption_dropout", "edit_pairs"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(a, name)}")
    if not 1.0 <= a.timestep_shift < float("inf"):
        p.error(f"--timestep-shift must be a finite number >= 1 (1: no shift), got {a.timestep_shift}")
    if not 0.0 < a.unet_lr < 1.0:  # also refuses nan
        p.error(f"--unet-lr must be a learning rate between 0 and 1, got {a.unet_lr}")
    if not 0.0 <= a.attention_loss < float("inf"):  # also refuses nan
        p.error(f"--attention-loss must be a finite weight >= 0, got {a.attention_loss}")
    if a.device != "cpu" and not (a.device.startswith("cuda") and torch.cuda.is_available()):
        p.error(f"--device {a.device}: " + ("no CUDA device is visible here; train with --device cpu"
                                            if a.device.startswith("cuda") else "choose cpu or cuda"))
    cfg = Config(seed=a.seed, threads=a.threads, n_train=a.n_train, vae_steps=a.vae_steps, vae_batch=a.vae_batch,
                 unet_steps=a.unet_steps, unet_batch=a.unet_batch, n_eval=a.n_eval, n_eval_vae=a.n_eval_vae,
                 two_shapes_prob=a.two_shapes_prob, turned_prob=a.turned_prob, caption_dropout=a.caption_dropout,
                 attention_loss=a.attention_loss, edit_pairs=a.edit_pairs, local_words=a.local_words,
                 fresh_ema=a.fresh_ema, device=a.device, timestep_shift=a.timestep_shift, unet_lr=a.unet_lr,
                 mixed_precision=a.mixed_precision)
    if a.latent_size is not None:
        if a.init_from is not None:
            p.error("--latent-size is for a run from scratch: a continuation keeps its parent's architecture")
        if a.latent_size != 16 and a.attention_loss:
            p.error("--attention-loss reads the world's 16x16 region maps: it needs --latent-size 16")
        for key, value in LATENT_SIZES[a.latent_size].items():
            setattr(cfg, key, value)
    if a.text_encoder_from is not None:
        if a.init_from is not None:
            p.error("--text-encoder-from is for a run from scratch: a continuation loads its parent's text encoder")
        if not (Path(a.text_encoder_from) / "text_encoder").is_dir():
            p.error(f"--text-encoder-from {a.text_encoder_from}: not a saved model folder (no text_encoder/)")
        cfg.text_encoder_from = str(Path(a.text_encoder_from).resolve())
    if a.fresh_ema and a.init_from is None:
        p.error("--fresh-ema is for a continuation (--init-from); a run from scratch always warms its EMA up")
    if a.init_from is not None:
        if not (Path(a.init_from) / "unet").is_dir():
            p.error(f"--init-from {a.init_from}: not a saved model folder (no unet/)")
        cfg.init_from = str(Path(a.init_from).resolve())
        cfg.vae_steps = 0  # the VAE is loaded and frozen
    return a, cfg


ARCH_KEYS = ("vae_channels", "vae_layers_per_block", "text_hidden", "text_layers", "text_heads",
             "unet_channels", "unet_heads", "unet_layers_per_block", "unet_attention")


def load_parent(cfg: Config):
    """--init-from: the folder's VAE, text encoder and UNet in fp32, and its lineage record (the parent's
    training.json summary). The architecture fields of cfg are set to the parent's, so training.json is true."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(cfg.init_from)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True).float()
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True).float()
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True).float()
    meta_path = folder / "training.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    config = meta.get("config", {})
    for key in ARCH_KEYS:
        if key in config:
            v = config[key]
            setattr(cfg, key, tuple(v) if isinstance(v, list) else v)
    cfg.local_words = cfg.local_words or bool(config.get("local_words", False))
    steps = meta.get("steps", {})
    total = meta.get("total_steps", steps)  # a parent that was itself continued carries its total
    parent = {"folder": str(folder), "command": meta.get("command"), "steps": steps, "total_steps": total,
              "attribute_accuracy": meta.get("attribute_accuracy"),
              "vae_psnr_db_heldout": meta.get("vae_psnr_db_heldout"),
              "wall_time_s": meta.get("wall_time_s"), "lineage": meta.get("lineage"),
              "recipe": meta.get("recipe", [meta["command"]] if "command" in meta else [])}
    return vae, text_encoder, unet, parent


def starting_networks(cfg: Config, tokenizer):
    """The networks a run starts from -> (vae, text_encoder, unet, parent): the --init-from folder's, whose
    architecture is then cfg's (parent: its lineage record), else new ones of cfg's architecture (parent None)."""
    if cfg.init_from is not None:
        return load_parent(cfg)
    return (*build_components(cfg, tokenizer), None)


def descent_fields(parent: dict | None, command: str | None, vae_steps: int, unet_steps: int) -> dict:
    """training.json's "recipe" (every command from scratch, this one last) and "total_steps" (this run's
    steps added to the parent's) for a model made by `command` from `parent` (load_parent's record, or None)."""
    before = parent["total_steps"] if parent else {}
    return {"recipe": (parent["recipe"] if parent else []) + ([command] if command else []),
            "total_steps": {"vae": vae_steps + before.get("vae", 0), "unet": unet_steps + before.get("unet", 0)}}


def load_text_encoder(text_encoder, folder: str) -> None:
    """--text-encoder-from: the folder's text encoder weights into the freshly built one (fp32). A folder whose
    text encoder has another width, depth or vocabulary is refused with the difference named."""
    from transformers import CLIPTextModel

    donor = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True).float()
    ours, theirs = text_encoder.state_dict(), donor.state_dict()
    wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if wrong:
        raise UserError(f"--text-encoder-from {folder}: its text encoder does not fit this run's "
                        f"(first mismatch: {wrong[0]}); give a model whose training.json has this run's "
                        f"text_hidden, text_layers and text_heads")
    text_encoder.load_state_dict(theirs, strict=False)


def configure_torch(cfg: Config) -> None:
    """The process-wide torch settings a run trains under (the sweep's probes use them too)."""
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # tiny Adam/EMA values must not slow the CPU down late in training
    if cfg.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # as cuDNN's convolutions already do: the GPU's fast path


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    from transformers import CLIPTokenizer

    out = Path(args.out).resolve()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    command = "python -m toyworld.train " + " ".join(sys.argv[1:] if argv is None else argv)
    checkpoint = UNetCheckpoint(out.with_name(f"{out.name}.checkpoint"), cfg.to_json(), args.checkpoint_every,
                                command)
    resuming = checkpoint.exists()
    if resuming:
        try:
            changed = checkpoint.changed_settings()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for field, (was, now) in changed.items():
            print(f"note: the checkpoint was written with {field} {was}, this run uses {now}: the weights will "
                  "differ from an uninterrupted run's by rounding", flush=True)
    disable = args.quiet
    configure_torch(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    print(f"toyworld.train: out={out} seed={cfg.seed} threads={cfg.threads} "
          f"n_train={cfg.n_train} vae_steps={cfg.vae_steps} unet_steps={cfg.unet_steps}", flush=True)

    # 1. data: training scenes from seed, held-out scenes from other seeds
    t = time.perf_counter()
    train = render_set(cfg.seed, cfg.n_train, cfg.two_shapes_prob, "render", disable, cfg.turned_prob)
    held_vae = render_set(cfg.seed + 10_000, cfg.n_eval_vae, cfg.two_shapes_prob, "render held-out", True,
                          cfg.turned_prob)
    erng = np.random.default_rng(cfg.seed + 20_000)
    eval_scenes = [random_scene(erng) for _ in range(cfg.n_eval)]
    times["render"] = time.perf_counter() - t

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    vae, text_encoder, unet, parent = starting_networks(cfg, tokenizer)
    if parent is not None:
        print(f"init from {cfg.init_from}: steps so far {parent['total_steps']}; "
              f"its accuracy {parent['attribute_accuracy']}", flush=True)
    elif cfg.text_encoder_from is not None:
        try:
            load_text_encoder(text_encoder, cfg.text_encoder_from)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"text encoder from {cfg.text_encoder_from}", flush=True)
    if cfg.local_words:
        localise_words(text_encoder)
    # the UNet's sample stream; a continuation draws a fresh one (it starts after the parent's steps)
    start = (parent["total_steps"].get("unet", 0) if parent else 0)
    gen = torch.Generator().manual_seed(cfg.seed + 1 + start)
    vae, text_encoder, unet = (m.to(cfg.device) for m in (vae, text_encoder, unet))
    sizes = {"vae": n_params(vae), "text_encoder": n_params(text_encoder), "unet": n_params(unet)}
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sizes.items()), flush=True)

    # 2. autoencoder
    t = time.perf_counter()
    saved_scaling = None
    if resuming:  # the VAE stage is behind the checkpoint: its weights come from it
        saved_scaling = checkpoint.load_vae(vae)
        vae.requires_grad_(False).eval()
        vae_stats = None
    elif parent is None:
        vae_stats = train_vae(vae, train, cfg, rng, disable)
    else:
        vae.requires_grad_(False).eval()
        vae_stats = None
    times["vae"] = time.perf_counter() - t

    # 3. latents and their scale
    t = time.perf_counter()
    with torch.no_grad():
        latents = encode_latents(vae, train.images, disable=disable)
        held = to_tensor(held_vae.images).to(cfg.device)
        rec = vae.decode(vae.encode(held).latent_dist.mean).sample
        rec = ((rec / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    vae_psnr_fp32 = float(np.mean([psnr(x, y) for x, y in zip(held_vae.images, rec)]))
    std, mean = float(latents.std()), float(latents.mean())
    if saved_scaling is not None:  # a resumed run: the checkpoint's
        scaling = saved_scaling
    else:  # from scratch, 1 / std of the latents; a continuation keeps its parent's
        scaling = 1.0 / std if parent is None else float(vae.config.scaling_factor)
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    times["encode"] = time.perf_counter() - t
    print(f"vae: held-out PSNR {vae_psnr_fp32:.2f} dB (fp32, before saving); latents mean {mean:.3f} "
          f"std {std:.3f} -> scaling_factor {scaling:.4f}{' (kept)' if parent else ''}", flush=True)

    # 4. UNet + text encoder
    t = time.perf_counter()
    ids = tokenize(tokenizer, train.captions)  # stays on the CPU: rows are picked by the CPU generator
    empty_ids = tokenize(tokenizer, [EMPTY_PROMPT])[0]
    where = None
    if cfg.attention_loss > 0:  # where each caption's words are: token regions and region maps per scene
        where = (torch.from_numpy(np.stack([token_regions(s, tokenizer) for s in train.scenes])),
                 torch.from_numpy(np.stack([scene_regions(s) for s in train.scenes])))
    twins = None
    if cfg.edit_pairs > 0:  # each training scene's edited twin: its latents (scaled like the scenes') and caption
        twin = twin_scenes(train.scenes, cfg.seed)
        images = np.stack([render(s, 64) for s in tqdm(twin, desc="render twins", disable=disable, **_bar())])
        twins = (encode_latents(vae, images, disable=disable) * scaling,
                 tokenize(tokenizer, [caption(s) for s in twin]))
        del images
    del train
    unet_stats = train_unet(unet, text_encoder, latents, ids, empty_ids, ddim_scheduler(), cfg, gen, disable,
                            checkpoint, vae, where, twins)
    times["unet"] = time.perf_counter() - t

    # 5. save, reload, score, publish
    t = time.perf_counter()
    if tmp.exists():
        shutil.rmtree(tmp)
    size_mb = save_pipeline(tmp, vae, text_encoder, unet, tokenizer)
    times["save"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate(tmp, cfg, held_vae.images, eval_scenes, disable)
    times["eval"] = time.perf_counter() - t
    if args.preview:
        write_preview(Path(args.preview), ev["_images"])
    times["total"] = time.perf_counter() - t_all
    acc = ev["attribute_accuracy"]
    descent = descent_fields(parent, command, cfg.vae_steps, cfg.unet_steps)
    report = {
        "command": command,
        # every command from scratch to this model, in order (a continuation's --init-from is the previous --out)
        "recipe": descent["recipe"],
        "config": cfg.to_json(), "seed": cfg.seed, "threads": cfg.threads,
        "steps": {"vae": cfg.vae_steps, "unet": cfg.unet_steps},
        "total_steps": descent["total_steps"],
        "lineage": parent,
        "parameters": sizes, "folder_mb": round(size_mb, 2), "weights_dtype_on_disk": "float16",
        "wall_time_s": {k: round(v, 1) for k, v in times.items()},
        "final_losses": {"vae": vae_stats, "unet": unet_stats},
        "latents": {"mean": mean, "std": std, "scaling_factor": scaling},
        "vae_psnr_db_heldout": round(ev["vae_psnr_db"], 3), "vae_psnr_db_heldout_fp32": round(vae_psnr_fp32, 3),
        "vae_psnr_db_heldout_min": round(ev["vae_psnr_db_min"], 3), "vae_psnr_n": ev["vae_n"],
        "attribute_accuracy": acc, "eval_sampler": ev["eval_sampler"],
        "loaded_dtypes": {"editing.core.model.load_model": ev["loaded_dtypes_load_model"],
                          "StableDiffusionPipeline.from_pretrained": ev["loaded_dtypes_pipeline"]},
        "versions": {"torch": torch.__version__, **_versions()},
    }
    (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    replace_folder(tmp, out)
    checkpoint.remove()  # the model is saved: nothing left to continue
    print(f"saved {out} ({size_mb:.1f} MB, weights fp16 on disk)", flush=True)
    print(f"quality: VAE PSNR {ev['vae_psnr_db']:.2f} dB on {ev['vae_n']} held-out renders; "
          f"text-to-image on {acc['n']} held-out captions ({ev['eval_sampler']}): "
          f"background {acc['background']:.2f}  colour {acc['colour']:.2f}  shape {acc['shape']:.2f}  "
          f"all {acc['all']:.2f}", flush=True)
    print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()), flush=True)
    if size_mb > MAX_FOLDER_MB:
        print(f"warning: the folder is {size_mb:.1f} MB, over the {MAX_FOLDER_MB:.0f} MB budget", file=sys.stderr)
        return 1
    return 0


def _versions() -> dict:
    import diffusers
    import transformers

    return {"diffusers": diffusers.__version__, "transformers": transformers.__version__}


if __name__ == "__main__":
    raise SystemExit(main())
