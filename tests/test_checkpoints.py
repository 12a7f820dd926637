"""Single checkpoint files as users download them, fp16-variant folders and cached hub ids, all with an
empty Hugging Face cache and no network: what loads, what is refused (and with what message), and that
nothing is fetched unless asked.

The full-size tests (marked slow: GBs, minutes) write SD 1.5 and SD 2.1 files in the original LDM layout
from the sd15-random / sd21-random weights with our own key mapping (tests/ldm_layout.py), load them, and
check every loaded tensor against the file; each file is built once per module and deleted after.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editing.core import checkpoints
from editing.core.checkpoints import SD1, SD2_BASE, SD2_V, SDXL_BASE, detect
from editing.core.errors import UserError
from editing.core.loading import load_model
from editing.core.offline import NetworkBlocked, no_network
from editing.core.sd_random import build_sd_random
from ldm_layout import CLIP, OPENCLIP, clip_to_ldm, openclip_to_ldm, to_ldm, unet_to_ldm, vae_to_ldm, \
    write_safetensors

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTO = REPO_ROOT / "examples" / "chelsea.png"
# Refusing a corrupt 1.2 GB file may grow the peak memory of a process that has already refused a small one
# (same libraries imported, same code path) by no more than this: reading the file would add 1.2 GB.
MAX_CORRUPT_RSS_GROWTH_BYTES = 256 * 2 ** 20


@pytest.fixture(autouse=True)
def empty_offline_cache(tmp_path_factory, monkeypatch):
    """An empty Hugging Face cache, offline, for this process and the commands it starts."""
    import huggingface_hub.constants

    home = tmp_path_factory.mktemp("hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def meta_shapes(name: str) -> dict[str, tuple]:
    """{LDM name: shape} of an sd*-random model's single file (built on the meta device: no memory)."""
    return dict(_meta_shapes(name))


@functools.lru_cache(maxsize=None)
def _meta_shapes(name: str) -> dict[str, tuple]:
    with torch.device("meta"):
        unet, vae, text_encoder, _, _ = build_sd_random(name)
    ldm = to_ldm(unet, vae, text_encoder, openclip=name == "sd21-random")
    return {k: tuple(v.shape) for k, v in ldm.items()}


def names_only_file(path: Path, shapes: dict[str, tuple]) -> Path:
    """A small file with the given tensor names: every tensor one value, except the few whose shapes say
    what the model is (the UNet's input conv and first cross-attention key)."""
    telling = (checkpoints.UNET_CONV_IN, checkpoints.UNET_CROSS_ATTENTION_K)
    write_safetensors(path, {k: torch.zeros(s if k in telling else (1,)) for k, s in shapes.items()})
    return path


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- what a file is, from its names and shapes


def test_sd1_file_is_detected_as_sd1_epsilon():
    found = detect(Path("x.safetensors"), meta_shapes("sd15-random"), None)
    assert (found.architecture, found.prediction_type) == (SD1, "epsilon")


def test_sd2_file_defaults_to_768_v_and_says_so():
    found = detect(Path("x.safetensors"), meta_shapes("sd21-random"), None)
    assert (found.architecture, found.prediction_type) == (SD2_V, "v_prediction")
    assert "--prediction-type epsilon" in found.note


def test_sd2_file_with_epsilon_uses_the_512_base_configs():
    found = detect(Path("x.safetensors"), meta_shapes("sd21-random"), "epsilon")
    assert (found.architecture, found.prediction_type) == (SD2_BASE, "epsilon")
    assert "--prediction-type" in found.note


def test_unknown_prediction_type_is_refused():
    with pytest.raises(UserError, match="prediction type"):
        detect(Path("x.safetensors"), meta_shapes("sd15-random"), "sample")


def sdxl_shapes() -> dict[str, tuple]:
    """The names that tell an SDXL base file: its two text encoders under conditioner.embedders."""
    shapes = {k: s for k, s in meta_shapes("sd15-random").items() if not k.startswith("cond_stage_model.")}
    shapes["conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"] = (77, 768)
    shapes["conditioner.embedders.1.model.positional_embedding"] = (77, 1280)
    shapes["conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"] = (1280,)
    return shapes


def test_sdxl_base_file_is_detected():
    found = detect(Path("x.safetensors"), sdxl_shapes(), None)
    assert (found.architecture, found.prediction_type) == (SDXL_BASE, "epsilon")


def test_sdxl_base_file_with_wrong_shapes_is_refused_in_one_line(tmp_path):
    """The names of an SDXL base file with tensors of the wrong sizes: it is tried as SDXL base (the shipped
    configs) and refused with what it was taken for, not a traceback."""
    path = names_only_file(tmp_path / "sd_xl_base_1.0.safetensors", sdxl_shapes())
    with pytest.raises(UserError) as excinfo:
        load_model(path, device="cpu")
    assert f"cannot load {path} as SDXL base" in one_line(excinfo)


def tiny_sdxl_file(folder: Path, dtype: torch.dtype | None = None) -> tuple[Path, Path, dict]:
    """A tiny SDXL written twice: as a diffusers folder (whose configs describe the file) and as one file in
    sd_xl_base_1.0.safetensors' layout. Returns (file, folder, components)."""
    from sdxl_tiny import save_tiny_sdxl_folder, tiny_sdxl_components
    from ldm_layout import sdxl_to_ldm

    components = tiny_sdxl_components(widths=(32, 48))  # two widths, as the release's 768 and 1280
    save_tiny_sdxl_folder(folder / "tiny-sdxl", components=components)
    path = folder / "tiny_sdxl_base.safetensors"
    write_safetensors(path, sdxl_to_ldm(components), dtype)
    return path, folder / "tiny-sdxl", components


def test_sdxl_single_file_loads_as_the_model_it_was_written_from(tmp_path):
    from editing.core.sdxl import SDXLModel

    path, config, components = tiny_sdxl_file(tmp_path)
    model = load_model(path, device="cpu", config=config)
    assert isinstance(model, SDXLModel) and model.notes["checkpoint"] == "SDXL base single file"
    assert model.notes["prediction_type"].startswith("epsilon")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, loaded = components[name].state_dict(), getattr(model, name).state_dict()
        assert sorted(loaded) == sorted(expected), name
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], tensor), (name, key)
    folder_model = load_model(config, device="cpu")
    prompts = ["a red circle", ""]
    ours, theirs = model.encode_prompts(prompts), folder_model.encode_prompts(prompts)
    assert torch.equal(ours.tokens, theirs.tokens) and torch.equal(ours.pooled, theirs.pooled)
    assert ours.tokens[1].abs().amax() == 0  # the release's zeros for the empty prompt, from model_index.json
    assert model.tokenizer_2.pad_token == "!" and model.tokenizer.pad_token == "<|endoftext|>"


def test_sdxl_single_file_edits_like_its_folder(tmp_path):
    """The same edit through the file and through the folder: the same pictures, up to float rounding (the
    weights are bit-equal; the pooled embedding differs by ~4e-7, a kernel's summation order, so at most one
    level of 255 in a few pixels)."""
    import numpy as np

    from editing import EditRequest, edit

    path, config, _ = tiny_sdxl_file(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    request = EditRequest(image=Path("scene.png"), source_prompt="a red circle", target_prompts=("a blue circle",),
                          steps=3, inner_steps=2)
    from_file = edit(load_model(path, device="cpu", config=config), image, request)
    from_folder = edit(load_model(config, device="cpu"), image, request)
    pairs = ((from_file.reconstruction, from_folder.reconstruction), (from_file.edits[0], from_folder.edits[0]))
    for ours, theirs in pairs:
        difference = np.abs(ours.astype(int) - theirs)
        assert difference.max() <= 1 and difference.mean() < 0.02, (difference.max(), difference.mean())


def test_fp16_sdxl_file_keeps_the_text_encoders_and_vae_fp32(tmp_path):
    """The released file is fp16: the UNet runs in the asked dtype, the encoders and the VAE in fp32 (their
    values are the file's, rounded to fp16 once)."""
    path, config, components = tiny_sdxl_file(tmp_path, torch.float16)
    model = load_model(path, device="cpu", config=config)
    for name in ("vae", "text_encoder", "text_encoder_2", "unet"):
        module = getattr(model, name)
        assert next(module.parameters()).dtype == torch.float32, name
        key, tensor = next(iter(components[name].state_dict().items()))
        assert torch.equal(module.state_dict()[key], tensor.half().float()), (name, key)


def test_a_config_folder_is_only_for_single_files(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_model("tiny-random", device="cpu", config=tmp_path)
    assert "single checkpoint files" in one_line(excinfo)
    path, _, _ = tiny_sdxl_file(tmp_path)
    with pytest.raises(UserError) as excinfo:
        load_model(path, device="cpu", config=tmp_path / "nowhere")
    assert "unet/config.json" in one_line(excinfo)


def test_the_full_size_sdxl_layout_converts_into_the_shipped_configs():
    """sd_xl_base_1.0.safetensors' names at full size (our writer, on the meta device: no memory), converted by
    the diffusers functions the loader uses, give every tensor of the modules the shipped configs build, each
    in its shape: a released file loads with them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from editing.core.sdxl import build_sdxl_random
    from ldm_layout import SDXL_OPENCLIP, sdxl_to_ldm

    with torch.device("meta"):
        ldm = sdxl_to_ldm(build_sdxl_random())
    folder = SDXL_BASE.config_dir
    configs = {part: json.loads((folder / part / "config.json").read_text()) for part in ("unet", "vae")}
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel.from_config(configs["unet"]), AutoencoderKL.from_config(configs["vae"])
        clip = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    converted = {"unet": (unet, convert_ldm_unet_checkpoint(ldm, configs["unet"])),
                 "vae": (vae, convert_ldm_vae_checkpoint(ldm, configs["vae"])),
                 "text_encoder": (clip, convert_ldm_clip_checkpoint(ldm)),
                 "text_encoder_2": (big_g, convert_open_clip_checkpoint(big_g, ldm, prefix=SDXL_OPENCLIP))}
    for part, (module, tensors) in converted.items():
        if not hasattr(module, "text_model"):  # transformers' flattened CLIPTextModel
            tensors = {k.removeprefix("text_model."): t for k, t in tensors.items()}
        expected = {k: tuple(t.shape) for k, t in module.state_dict().items()}
        assert set(expected) <= set(tensors), (part, sorted(set(expected) - set(tensors))[:3])
        wrong = [k for k, shape in expected.items() if tuple(tensors[k].shape) != shape]
        assert not wrong, (part, wrong[:3])
    assert sum(t.numel() for t in unet.parameters()) == 2_567_463_684


def test_shipped_sdxl_configs_have_the_released_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = SDXL_BASE.config_dir
    with torch.device("meta"):
        parts = (UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                 AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                 CLIPTextModel(CLIPTextConfig.from_json_file(folder / "text_encoder" / "config.json")),
                 CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(folder / "text_encoder_2" / "config.json")))
    assert [sum(p.numel() for p in m.parameters()) for m in parts] == [2_567_463_684, 83_653_863, 123_060_480,
                                                                       694_659_840]
    assert parts[1].config.scaling_factor == 0.13025
    tokenizers = [json.loads((folder / t / "tokenizer_config.json").read_text())["pad_token"]
                  for t in ("tokenizer", "tokenizer_2")]
    assert tokenizers == ["<|endoftext|>", "!"]


@pytest.mark.parametrize("name, shapes, what", [
    ("pytorch_lora_weights.SAFETENSORS",
     {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "is a LoRA"),
    ("vae-ft-mse-840000-ema-pruned.safetensors",
     {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, "is a VAE alone"),
    ("sd_xl_refiner_1.0.safetensors",
     {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
      "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3)}, "is an SDXL refiner"),
    ("embedding.safetensors", {"emb_params": (2, 768)}, "textual-inversion embedding"),
])
def test_files_that_are_not_a_whole_model_are_refused_with_what_they_are(tmp_path, name, shapes, what):
    path = tmp_path / name
    write_safetensors(path, {k: torch.zeros(s) for k, s in shapes.items()})
    with pytest.raises(UserError) as excinfo:
        load_model(path, device="cpu")
    message = one_line(excinfo)
    assert what in message and str(path) in message


def test_inpainting_unet_is_refused(tmp_path):
    shapes = dict(meta_shapes("sd15-random"), **{checkpoints.UNET_CONV_IN: (320, 9, 3, 3)})
    with pytest.raises(UserError, match="9 input channels"):
        load_model(names_only_file(tmp_path / "sd-v1-5-inpainting.safetensors", shapes), device="cpu")


# ---------------------------------------------------------------- broken and hostile files


def test_truncated_safetensors_is_refused_naming_the_cause(tmp_path):
    path = names_only_file(tmp_path / "model.safetensors", meta_shapes("sd15-random"))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(UserError) as excinfo:
        load_model(path, device="cpu")
    assert "truncated" in one_line(excinfo)


@pytest.mark.parametrize("damage", ["header length", "header bytes"])
def test_corrupt_header_is_refused(tmp_path, damage):
    path = names_only_file(tmp_path / "model.safetensors", meta_shapes("sd15-random"))
    with open(path, "r+b") as f:
        if damage == "header length":
            f.write((2 ** 40).to_bytes(8, "little"))
        else:
            f.seek(8)
            f.write(b"\xff" * 64)
    with pytest.raises(UserError, match="corrupt"):
        load_model(path, device="cpu")


CHILD_LOAD = """
import json, resource, sys
from editing.core.errors import UserError
from editing.core.loading import load_model

def refuse(path):
    try:
        load_model(path, device="cpu")
    except UserError as exc:
        return str(exc)
    raise SystemExit(f"{path} loaded")

refuse(sys.argv[1])  # the small file: imports whatever the refusal needs, so the baseline holds the libraries
baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = refuse(sys.argv[2])
growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb
print(json.dumps({"error": error, "baseline_kb": baseline_kb, "growth_kb": growth_kb}))
"""


@pytest.mark.parametrize("damage", ["truncated", "header bytes"])
def test_corrupt_gigabyte_file_is_refused_with_memory_bounded_by_the_header(tmp_path, damage):
    """A 4 GB SD 1.5 download cut at 1.2 GB (or with a damaged header): refused, and the process that
    refused it never held the file in memory: the child's peak RSS, measured by itself, barely grows from
    refusing a header-only copy first (which imports the same libraries) to refusing the big file."""
    header = {}
    offset = 0
    for name, shape in meta_shapes("sd15-random").items():
        size = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    small, big = tmp_path / "small" / "model.safetensors", tmp_path / "v1-5-pruned-emaonly.safetensors"
    small.parent.mkdir()
    for path, size in ((small, 8 + len(raw)), (big, int(1.2 * 2 ** 30))):
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(b"\xff" * len(raw) if damage == "header bytes" else raw)
            f.truncate(size)  # sparse: the disk holds only the header
    done = subprocess.run([sys.executable, "-c", CHILD_LOAD, str(small), str(big)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert ("truncated" if damage == "truncated" else "corrupt") in result["error"]
    assert result["growth_kb"] * 1024 < MAX_CORRUPT_RSS_GROWTH_BYTES, result
    assert done.stderr == ""


class _WritesAFile:
    """A pickled object whose unpickling would create a file: what a hostile .ckpt does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_hostile_ckpt_never_runs_its_payload(tmp_path):
    marker = tmp_path / "payload-ran.txt"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "extra": _WritesAFile(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UserError) as excinfo:
        load_model(path, device="cpu")
    message = one_line(excinfo)
    assert "refused" in message and "nothing from it was run" in message
    assert not marker.exists()


# ---------------------------------------------------------------- no hidden network


@pytest.fixture
def network_calls(monkeypatch):
    """socket connects and host lookups made by the code under test (each one fails at once)."""
    import huggingface_hub.constants

    calls = []

    def refuse_connect(self, address):
        calls.append(("connect", address))
        raise OSError("the test's network is off")

    def refuse_lookup(host, *args, **kwargs):
        calls.append(("getaddrinfo", host))
        raise OSError("the test's network is off")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # only our code keeps it local
    return calls


def test_missing_configs_are_named_without_a_network_request(tmp_path, monkeypatch, network_calls):
    path = names_only_file(tmp_path / "V1-5-PRUNED.SAFETENSORS", meta_shapes("sd15-random"))
    monkeypatch.setattr(checkpoints, "CONFIG_ROOT", tmp_path / "configs-removed")
    with pytest.raises(UserError) as excinfo:
        load_model(path, device="cpu")
    message = one_line(excinfo)
    assert "SD 1.x configs" in message and "model_index.json" in message and "--download" in message
    assert network_calls == []


def test_download_is_the_only_way_to_the_network(tmp_path, monkeypatch, network_calls):
    path = names_only_file(tmp_path / "model.safetensors", meta_shapes("sd15-random"))
    monkeypatch.setattr(checkpoints, "CONFIG_ROOT", tmp_path / "configs-removed")
    with pytest.raises(UserError, match="could not download the SD 1.x configs"):
        load_model(path, device="cpu", download=True)
    assert network_calls, "download=True should have tried the hub"


def test_no_network_blocks_and_records_connects():
    with no_network() as attempts:
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert attempts.tried
    with socket.socket() as s:  # outside the block sockets work again (a refused local port, not a block)
        with pytest.raises(OSError) as excinfo:
            s.connect(("127.0.0.1", 9))
        assert not isinstance(excinfo.value, NetworkBlocked)


def test_a_network_attempt_inside_the_loader_becomes_a_user_error():
    from editing.core.loading import _offline

    with pytest.raises(UserError) as excinfo:
        with _offline("the widget", debug=False):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert "the widget" in one_line(excinfo) and "--download" in str(excinfo.value)


def test_uncached_hub_id_says_how_to_download():
    with pytest.raises(UserError) as excinfo:
        load_model("someone/not-cached", device="cpu")
    message = one_line(excinfo)
    assert "someone/not-cached" in message and "--download" in message


def test_download_of_a_hub_id_is_tried_only_when_asked(network_calls):
    with pytest.raises(UserError, match="--download"):
        load_model("someone/not-cached", device="cpu")
    assert network_calls == []
    with pytest.raises(UserError, match="could not download 'someone/not-cached'"):
        load_model("someone/not-cached", device="cpu", download=True)


def test_prediction_type_is_refused_for_a_folder(tmp_path):
    with pytest.raises(UserError, match="single checkpoint files"):
        load_model(tmp_path, device="cpu", prediction_type="epsilon")


def test_cli_failure_prints_only_the_error_line(tmp_path):
    path = tmp_path / "lora.safetensors"
    write_safetensors(path, {"lora_unet_x.lora_up.weight": torch.zeros(2, 2)})
    done = subprocess.run([sys.executable, "-m", "editing.run", "--image", str(PHOTO), "--source-prompt", "a cat",
                           "--target-prompt", "a dog", "--model", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "LoRA" in done.stderr


# ---------------------------------------------------------------- fp16-variant folders and cached hub ids


@pytest.fixture(scope="module")
def fp16_variant_folder(tmp_path_factory):
    """The tiny model saved as diffusers does for `variant="fp16"`: only *.fp16.* weights, configs that say
    float16."""
    from diffusers import StableDiffusionPipeline

    from editing.core.model import build_tiny_model

    unet, vae, text_encoder, tokenizer, scheduler = build_tiny_model()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(torch.float16)
    folder = tmp_path_factory.mktemp("variant") / "tiny-fp16"
    pipe.save_pretrained(folder, variant="fp16")
    assert not list(folder.glob("*/diffusion_pytorch_model.safetensors")) and list(folder.glob("*/*.fp16.*"))
    return folder, pipe


def assert_loaded_fp16_variant(model, pipe):
    assert model.text_encoder.dtype == torch.float32 and model.vae.dtype == torch.float32
    for ours, saved in ((model.text_encoder, pipe.text_encoder), (model.vae, pipe.vae), (model.unet, pipe.unet)):
        for (name, a), (_, b) in zip(ours.state_dict().items(), saved.state_dict().items()):
            assert torch.equal(a, b.float()), name
    assert "fp16" in model.notes["weights"]


def test_fp16_variant_only_folder_loads_with_fp32_text_encoder(fp16_variant_folder):
    folder, pipe = fp16_variant_folder
    assert_loaded_fp16_variant(load_model(folder, device="cpu"), pipe)


def test_cached_hub_id_with_only_fp16_variant_files_loads(fp16_variant_folder, empty_offline_cache):
    folder, pipe = fp16_variant_folder
    repo = empty_offline_cache / "hub" / "models--tester--tiny-fp16"
    shutil.copytree(folder, repo / "snapshots" / "0123456789abcdef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    model = load_model("tester/tiny-fp16", device="cpu")
    assert model.name == "tester/tiny-fp16"
    assert_loaded_fp16_variant(model, pipe)


# ---------------------------------------------------------------- full-size single files (slow)


def loaded_as_ldm(model, openclip: bool) -> dict:
    """The loaded model's tensors under the single file's names."""
    text = openclip_to_ldm(model.text_encoder, extra_layer=False) if openclip else clip_to_ldm(model.text_encoder)
    text.pop(CLIP + "embeddings.position_ids", None)
    return {**unet_to_ldm(model.unet), **vae_to_ldm(model.vae), **text}


def assert_every_tensor_equals_the_file(model, saved: Path, openclip: bool) -> None:
    from safetensors import safe_open

    loaded = loaded_as_ldm(model, openclip)
    with safe_open(str(saved), "pt") as f:
        missing = set(loaded) - set(f.keys())
        assert not missing, sorted(missing)[:5]
        for name, tensor in loaded.items():
            assert torch.equal(tensor, f.get_tensor(name).float()), name


def build_file(name: str, path: Path) -> Path:
    unet, vae, text_encoder, _, _ = build_sd_random(name)
    write_safetensors(path, to_ldm(unet, vae, text_encoder, openclip=name == "sd21-random"))
    del unet, vae, text_encoder
    gc.collect()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Single files built on demand, once each, and deleted when the module is done."""
    folder = tmp_path_factory.mktemp("single-files")
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_file(name, folder / f"{name}.safetensors")
        return built[name]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


def edit_with_cli(model_path: Path, out: Path, *extra) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "editing.run", "--image", str(PHOTO), "--source-prompt", "a cat on a blanket",
         "--target-prompt", "a tiger on a blanket", "--model", str(model_path), "--steps", "2",
         "--inversion", "ddim", "--quiet", "--out", str(out), *extra],  # ddim: the loading is under test, not NTI
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert (out / "edit.png").is_file()
    return json.loads((out / "summary.json").read_text())


def derived(source: Path, form: str) -> tuple[Path, Path]:
    """(the file to load, the safetensors file its tensors must equal) for one release form of SD 1.5."""
    from safetensors.torch import load_file

    if form == "safetensors":
        return source, source
    tensors = load_file(str(source))
    if form == "fp16":
        path = source.with_name("v1-5-pruned-emaonly-fp16.safetensors")
        write_safetensors(path, tensors, dtype=torch.float16)
        return path, path
    path = source.with_name("v1-5-pruned-emaonly.CKPT")  # upper-case suffix: still a checkpoint
    torch.save({"state_dict": tensors, "global_step": 840000}, path)
    return path, source


@pytest.mark.slow
@pytest.mark.parametrize("form", ["safetensors", "ckpt", "fp16"])
def test_sd15_single_file_loads_offline_and_edits(files, form, tmp_path):
    path, reference = derived(files("sd15-random"), form)
    model = load_model(path, device="cpu")
    assert (model.resolution, model.prediction_type, model.latent_scale) == (512, "epsilon", 0.18215)
    assert model.text_encoder.dtype == torch.float32 and model.vae.dtype == torch.float32
    assert model.tokenizer.pad_token == "<|endoftext|>"
    assert_every_tensor_equals_the_file(model, reference, openclip=False)
    del model
    gc.collect()
    summary = edit_with_cli(path, tmp_path / "out")
    assert summary["model_notes"]["prediction_type"].startswith("epsilon")
    if path != reference:
        path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("prediction_type", [None, "epsilon"])
def test_sd2_single_file_loads_offline_and_edits(files, prediction_type, tmp_path):
    path = files("sd21-random")
    model = load_model(path, device="cpu", prediction_type=prediction_type)
    expected = (768, "v_prediction") if prediction_type is None else (512, "epsilon")
    assert (model.resolution, model.prediction_type) == expected
    assert model.unet.config.upcast_attention is (prediction_type is None)
    assert model.tokenizer.pad_token == "!" and model.text_encoder.config.num_hidden_layers == 23
    assert_every_tensor_equals_the_file(model, path, openclip=True)
    del model
    gc.collect()
    extra = () if prediction_type is None else ("--prediction-type", prediction_type)
    summary = edit_with_cli(path, tmp_path / "out", *extra)
    assert summary["model_notes"]["prediction_type"].startswith(expected[1])
    assert ("--prediction-type" in summary["model_notes"]["prediction_type"])
