"""The red-team findings (issue 20): every bad input is exit 2 and exactly one `error:` line on stderr (no
traceback, no library's own line); no output replaces an input or leaves --out; saved inversions verify
themselves; a kill at any moment leaves only whole files under final names.

Most runs call the commands in-process through editing.cli.run_main on the seeded tiny model; capfd sees the
file descriptors, so a line OpenCV or libpng prints in C is caught too. The kill tests and the two concurrent
batches are real subprocesses (slow).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from editing import batch as batch_module, multires as multires_module, multires_ti, run as run_module
from editing.cli import run_main
from editing.core.errors import UserError
from editing.core.image_io import MAX_IMAGE_PIXELS, read_image
from editing.core.outputs import OutputFolder, safe_name
from inversion import record as record_module
from inversion.record import Inversion

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "toy-red-circle.png"
SOURCE = "a red circle on a gray background"
TARGET = "a blue circle on a gray background"
TINY = ["--model", "tiny-random", "--steps", "2", "--inner-steps", "1", "--quiet"]
SUBPROCESS_TIMEOUT_S = 600  # model loading alone takes ~20 s per process on a busy 2-core machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run_argv(out, *extra, image=PHOTO) -> list[str]:
    return ["--image", str(image), "--source-prompt", SOURCE, "--target-prompt", TARGET, "--out", str(out),
            *TINY, *map(str, extra)]


def one_error_line(capfd) -> str:
    """stderr holds exactly one line, `error: ...`, and no traceback."""
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def refused(main, argv, capfd) -> str:
    assert run_main(main, [str(a) for a in argv]) == 2
    return one_error_line(capfd)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR chunk claiming width x height RGB, and IEND: a header without pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


@pytest.fixture
def photo(tmp_path) -> Path:
    """A copy of the toy photo, named source.png (the name editing.run gives its cropped input)."""
    path = tmp_path / "photos" / "source.png"
    path.parent.mkdir()
    shutil.copy(PHOTO, path)
    return path


# ---------------------------------------------------------------- validation: exit 2 + one sentence


@pytest.mark.parametrize("extra, message", [
    (["--steps", "1001"], "at most 1000"),
    (["--steps", "100000"], "at most 1000"),
    (["--guidance", "nan"], "finite"),
    (["--guidance", "inf"], "finite"),
    (["--seed", str(2 ** 70)], "--seed"),
    (["--reweight", "blue=nan"], "--reweight"),
    (["--blend-words", "blue", "--blend-threshold", "nan"], "--blend-threshold"),
    (["--device", "mps"], "MPS is not available"),
    (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "CUDA"),
    (["--method", "null-finetune", "--finetune-inner", "0"], "--finetune-inner"),
    (["--max-pixels", "0"], "--max-pixels"),
    (["--max-pixels", "100"], "--max-pixels"),  # the 64 x 64 photo is over a 100-pixel limit
])
def test_bad_option_values_exit_2_with_one_line(tmp_path, capfd, extra, message):
    assert message in refused(run_module.main, run_argv(tmp_path / "out", *extra), capfd)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x02\xff\xfe binary", "not a text file"),
    (b"steps: 1.5\n", "steps takes a whole number"),
    (b"steps: many\n", "steps takes a whole number"),
    (b"guidance: [1, 2]\n", "guidance takes a number"),
    (b"method: bogus\n", "method takes one of"),
    (b"quiet: 3\n", "quiet is a switch"),
])
def test_bad_config_files_exit_2_naming_the_key(tmp_path, capfd, content, message):
    config = tmp_path / "options.yaml"
    config.write_bytes(content)
    line = refused(run_module.main, run_argv(tmp_path / "out", "--config", config), capfd)
    assert message in line and str(config) in line


def test_unreadable_config_file_exits_2(tmp_path, capfd, monkeypatch):
    config = tmp_path / "options.yaml"
    config.write_text("steps: 2\n")
    real = Path.read_bytes

    def denied(self):  # the tests run as root, where chmod 000 does not stop reading
        if self == config:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert "Permission denied" in refused(run_module.main, run_argv(tmp_path / "out", "--config", config), capfd)


def test_a_good_config_value_still_works(tmp_path, capfd):
    config = tmp_path / "options.yaml"
    config.write_text("steps: 2\nguidance: '5'\nmethod: p2p\ncrop: [0, 0, 0, 0]\ncross_replace: [0.2, 0.8]\n")
    assert run_main(run_module.main, run_argv(tmp_path / "out", "--config", config)) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["guidance"] == 5.0
    assert summary["request"]["cross_replace"] == [0.2, 0.8]


# ---------------------------------------------------------------- the image reader


def test_fifo_device_and_folder_are_refused_before_opening(tmp_path, capfd):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert "pipe" in refused(run_module.main, run_argv(tmp_path / "out", image=fifo), capfd)
    assert "device" in refused(run_module.main, run_argv(tmp_path / "out", image="/dev/zero"), capfd)
    assert "folder" in refused(run_module.main, run_argv(tmp_path / "out", image=tmp_path), capfd)
    assert "pipe" in refused(run_module.main, run_argv(tmp_path / "out", "--blend-words", "red", "--mask", fifo),
                             capfd)


def test_huge_header_is_one_line_before_decoding(tmp_path, capfd):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100000, 100000))
    line = refused(run_module.main, run_argv(tmp_path / "out", image=bomb), capfd)
    assert f"{100000 * 100000} pixels" in line and "--max-pixels" in line
    wide = tmp_path / "wide.png"  # under Pillow's own limit, over ours: the header's sides are named
    wide.write_bytes(png_header(100000, 1500))
    assert "100000 x 1500" in refused(run_module.main, run_argv(tmp_path / "out", image=wide), capfd)


def test_max_pixels_bounds_the_header_and_can_be_raised(tmp_path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((40, 60, 3), np.uint8))
    with pytest.raises(UserError, match="60 x 40"):
        read_image(big, max_pixels=60 * 40 - 1)
    assert read_image(big, max_pixels=60 * 40).shape == (40, 60, 3)
    assert MAX_IMAGE_PIXELS >= 50_000_000  # a big camera photo (about 61 megapixels) passes by default


def test_truncated_png_prints_only_our_line(tmp_path, capfd):
    data = PHOTO.read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[:len(data) // 2])
    assert "truncated or corrupt" in refused(run_module.main, run_argv(tmp_path / "out", image=broken), capfd)


# ---------------------------------------------------------------- --out checked up front


def test_out_that_is_a_file_exits_2(tmp_path, capfd):
    out = tmp_path / "out"
    out.write_text("a file")
    assert "is a file" in refused(run_module.main, run_argv(out), capfd)
    assert out.read_text() == "a file"


def test_out_under_proc_exits_2(tmp_path, capfd):
    assert "/proc" in refused(run_module.main, run_argv("/proc/self/out"), capfd)


def test_out_on_a_read_only_file_system_exits_2(tmp_path, capfd, monkeypatch):
    out = tmp_path / "ro"
    real = os.open

    def read_only(path, flags, *args, **kwargs):  # no read-only mount can be made here, so os.open says so
        if str(path).startswith(str(out)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    line = refused(run_module.main, run_argv(out), capfd)
    assert "Read-only file system" in line and str(out) in line


# ---------------------------------------------------------------- nothing of the user's lost


def test_out_in_the_photos_folder_never_replaces_the_photo(photo, capfd):
    before = photo.read_bytes()
    assert "input file" in refused(run_module.main, run_argv(photo.parent, image=photo), capfd)
    assert photo.read_bytes() == before
    assert sorted(p.name for p in photo.parent.iterdir()) == ["source.png"]  # nothing written beside it


def test_save_inversion_onto_the_photo_is_refused(photo, tmp_path, capfd):
    before = photo.read_bytes()
    line = refused(run_module.main, run_argv(tmp_path / "out", "--save-inversion", photo, image=photo), capfd)
    assert "--save-inversion" in line
    assert photo.read_bytes() == before


def test_a_hard_link_to_the_photo_is_still_the_photo(photo, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    os.link(photo, out / "grid.png")
    before = photo.read_bytes()
    assert "input file" in refused(run_module.main, run_argv(out, image=photo), capfd)
    assert photo.read_bytes() == before


def test_output_folder_never_writes_through_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "edit.png").write_bytes(b"precious")
    out = OutputFolder.prepare(tmp_path / "out")
    (tmp_path / "out" / "img").symlink_to(outside, target_is_directory=True)
    (tmp_path / "out" / "report.json").symlink_to(outside / "edit.png")
    for parts in (("img", "edit.png"), ("report.json",)):
        with pytest.raises(UserError, match="link"):
            out.path(*parts)
    with pytest.raises(UserError, match="link"):
        out.child("img").path("edit.png")
    for name in ("..", "", "a/b", "."):
        with pytest.raises(UserError, match="plain"):
            out.path(name)
    assert (outside / "edit.png").read_bytes() == b"precious" and [p.name for p in outside.iterdir()] == ["edit.png"]


def test_safe_names_stay_inside():
    for text in ("../x", "/etc/passwd", "..", ".hidden", "a/../../b", "", "x" * 300):
        name = safe_name(text)
        assert name and "/" not in name and not name.startswith(".") and len(name) <= 60


# ---------------------------------------------------------------- editing.batch


def test_batch_never_writes_through_a_link_planted_in_out(tmp_path, capfd):
    photos, out, outside = tmp_path / "photos", tmp_path / "out", tmp_path / "outside"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "circle.png")
    outside.mkdir()
    (outside / "summary.json").write_text("precious")
    out.mkdir()
    (out / "circle").symlink_to(outside, target_is_directory=True)
    code = run_main(batch_module.main, ["--images", str(photos), "--source-prompt", SOURCE, "--target-prompt",
                                        TARGET, "--out", str(out), *TINY])
    assert code == 1  # that image failed, the batch went on
    report = json.loads((out / "report.json").read_text())
    assert report["images"][0]["status"] == "failed" and "link" in report["images"][0]["error"]
    assert (outside / "summary.json").read_text() == "precious" and [p.name for p in outside.iterdir()] == \
        ["summary.json"]


def test_batch_report_written_through_a_planted_link_is_refused(tmp_path, capfd):
    photos, out, outside = tmp_path / "photos", tmp_path / "out", tmp_path / "outside.json"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "circle.png")
    outside.write_text("precious")
    out.mkdir()
    (out / "report.json").symlink_to(outside)
    code = run_main(batch_module.main, ["--images", str(photos), "--source-prompt", SOURCE, "--target-prompt",
                                        TARGET, "--out", str(out), *TINY])
    assert code == 2 and "link" in capfd.readouterr().err
    assert outside.read_text() == "precious"


def test_batch_manifest_fifo_is_a_failed_image_not_a_hang(tmp_path, capfd):
    os.mkfifo(tmp_path / "pipe.png")
    shutil.copy(PHOTO, tmp_path / "circle.png")
    manifest = tmp_path / "edits.yaml"
    manifest.write_text(f"- image: pipe.png\n  source_prompt: {SOURCE}\n  target_prompt: {TARGET}\n"
                        f"- image: circle.png\n  source_prompt: {SOURCE}\n  target_prompt: {TARGET}\n")
    code = run_main(batch_module.main, ["--manifest", str(manifest), "--out", str(tmp_path / "out"), *TINY])
    assert code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    status = {e["name"]: (e["status"], e["error"]) for e in report["images"]}
    assert status["pipe"][0] == "failed" and "pipe" in status["pipe"][1]
    assert status["circle"][0] == "done"


def test_batch_out_in_the_photos_folder_keeps_every_photo(tmp_path, capfd):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "report.json")  # a photo named like the batch's report
    before = (photos / "report.json").read_bytes()
    code = run_main(batch_module.main, ["--images", str(photos), "--source-prompt", SOURCE, "--target-prompt",
                                        TARGET, "--out", str(photos), *TINY])
    assert code == 2 and "input file" in capfd.readouterr().err
    assert (photos / "report.json").read_bytes() == before


def test_batch_with_too_many_steps_exits_2(tmp_path, capfd):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "circle.png")
    argv = ["--images", photos, "--source-prompt", SOURCE, "--target-prompt", TARGET, "--out", tmp_path / "out",
            *TINY, "--steps", "1001"]
    assert "at most 1000" in refused(batch_module.main, argv, capfd)


def test_a_second_batch_on_a_locked_out_stops_at_once(tmp_path, capfd):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "circle.png")
    out.mkdir()
    with open(out / ".lock", "w") as holder:  # as a running batch holds it
        holder.write("12345\n")
        holder.flush()
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        line = refused(batch_module.main, ["--images", photos, "--source-prompt", SOURCE, "--target-prompt", TARGET,
                                           "--out", out, *TINY], capfd)
    assert "another editing.batch (process 12345)" in line
    assert not (out / "report.json").exists()


@pytest.mark.slow
def test_two_concurrent_batches_report_what_is_on_disk(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for name in ("a", "b", "c", "d"):  # enough work (about a minute) to still hold the lock when the second starts
        shutil.copy(PHOTO, photos / f"{name}.png")
    argv = [sys.executable, "-m", "editing.batch", "--images", str(photos), "--source-prompt", SOURCE,
            "--target-prompt", TARGET, "--out", str(out), "--model", "tiny-random", "--steps", "50",
            "--inner-steps", "10"]
    first = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not lock_held(out / ".lock"):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    _, first_err = first.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and second.stderr.splitlines()[-1].startswith("error: another editing.batch")
    report = json.loads((out / "report.json").read_text())
    for entry in report["images"]:  # the report is what is on disk
        assert entry["status"] == "done"
        summary = json.loads((out / entry["folder"] / "summary.json").read_text())
        assert all((out / entry["folder"] / n).is_file() for n in ("edit.png", "grid.png", "source.png"))
        assert summary["target_prompts"] == [TARGET]


def lock_held(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path) as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
        return False


# ---------------------------------------------------------------- PIE-Bench ids, timing run folders


@pytest.mark.parametrize("entry_id", ["../escaped", "/tmp/escaped-pie-entry", ".hidden", "a/b"])
def test_pie_entry_ids_cannot_name_a_folder_outside_out(tmp_path, capfd, entry_id):
    from benchmarks.quality import main as quality_main

    data = tmp_path / "pie"
    (data / "annotation_images").mkdir(parents=True)
    shutil.copy(PHOTO, data / "annotation_images" / "p.png")
    mapping = {entry_id: {"image_path": "p.png", "original_prompt": SOURCE, "editing_prompt": TARGET,
                          "mask": [0, 10], "editing_type_id": "0"}}
    (data / "mapping_file.json").write_text(json.dumps(mapping))
    before = sorted(p.name for p in tmp_path.iterdir())
    line = refused(quality_main, ["pie", "--data", data, "--out", tmp_path / "out", "--steps", "2",
                                  "--inner-steps", "1", "--model", "tiny-random", "--quiet"], capfd)
    assert "entry id" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/tmp/escaped-pie-entry").exists()


def test_timing_run_folders_are_unique_per_photo(tmp_path):
    from benchmarks.timing import run_folders

    images = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "c" / "x-2.png"),
              str(tmp_path / "d" / "X.png")]
    folders = run_folders(images, OutputFolder.prepare(tmp_path / "out").child("runs", "p2p"))
    names = [f.folder.name.lower() for f in folders]
    assert len(set(names)) == len(images)
    assert all(f.folder.parent == tmp_path / "out" / "runs" / "p2p" for f in folders)


# ---------------------------------------------------------------- multires


def test_multires_train_with_zero_steps_writes_nothing(tmp_path, capfd):
    out = tmp_path / "concepts"
    line = refused(multires_module.main, ["train", "--images", PHOTO, "--name", "c", "--init-word", "circle",
                                          "--steps", "0", "--model", "tiny-random", "--out", out], capfd)
    assert "--steps" in line
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("change", [{"scales": "many"}, {"format_version": "x"}, {"name": "../evil"}])
def test_concept_with_damaged_metadata_exits_2(tmp_path, capfd, change):
    path = tmp_path / "c.safetensors"
    metadata = {"format": multires_ti.FORMAT, "format_version": str(multires_ti.FORMAT_VERSION),
                "name": "c", "scales": "2", **change}
    save_file({f"<{metadata['name']}>": torch.zeros(2, 32)}, str(path), metadata=metadata)
    line = refused(multires_module.main, ["sample", "--concepts", path, "--prompt", "a <c(0.5)>",
                                          "--model", "tiny-random", "--steps", "1", "--out", tmp_path / "out"], capfd)
    assert "damaged" in line


# ---------------------------------------------------------------- the self-verifying inversion record


@pytest.fixture(scope="module")
def saved_record(tmp_path_factory):
    """editing.run's own --save-inversion file of the toy photo on the tiny model (2 steps)."""
    folder = tmp_path_factory.mktemp("record")
    path = folder / "inv.safetensors"
    assert run_main(run_module.main, run_argv(folder / "out", "--save-inversion", path)) == 0
    return path


def rewrite(source: Path, target: Path, meta_changes=None, tensor_changes=None) -> Path:
    with safe_open(str(source), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes or {})
    for name, change in (tensor_changes or {}).items():
        tensors[name] = change(tensors[name])
    save_file(tensors, str(target), metadata=meta)
    return target


@pytest.mark.parametrize("meta, tensors", [
    ({"prompt": "a blue circle on a gray background"}, None),
    ({"params": json.dumps({"steps": 2, "guidance": 1.0})}, None),
    ({"method": "ddim"}, None),
    ({"method": "no-such-method"}, None),
    (None, {"x_T": lambda t: t + 1e-3}),
    (None, {"nulls": lambda t: t.flip(0)}),
])
def test_a_changed_inversion_file_is_refused(saved_record, tmp_path, capfd, meta, tensors):
    tampered = rewrite(saved_record, tmp_path / "tampered.safetensors", meta, tensors)
    line = refused(run_module.main, run_argv(tmp_path / "out", "--inversion-file", tampered), capfd)
    assert "the inversion file was changed after it was saved" in line
    assert not (tmp_path / "out" / "edit.png").exists()


def test_an_older_inversion_format_is_refused_with_invert_again(saved_record, tmp_path, capfd):
    old = rewrite(saved_record, tmp_path / "old.safetensors", {"format": "2"})
    line = refused(run_module.main, run_argv(tmp_path / "out", "--inversion-file", old), capfd)
    assert "format 2" in line and "invert the photo again" in line


def test_the_untouched_inversion_file_is_accepted(saved_record, tmp_path):
    assert run_main(run_module.main, run_argv(tmp_path / "out", "--inversion-file", saved_record)) == 0
    record = Inversion.load(saved_record)
    assert record.steps == 2 and record_module.FORMAT_VERSION == 3


# ---------------------------------------------------------------- stderr of the default model


def test_default_model_prints_nothing_before_our_error(tmp_path):
    """The loading path (transformers' and torch's notices) leaves stderr to our one line."""
    result = subprocess.run([sys.executable, "-m", "editing.run", "--image", str(PHOTO), "--source-prompt", SOURCE,
                             "--target-prompt", TARGET, "--steps", "1001", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: --steps")


# ---------------------------------------------------------------- SIGKILL at several moments


def final_files_are_whole(out: Path) -> list[str]:
    """Every file under a final name decodes or parses; returns their names."""
    names = []
    for path in out.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        names.append(path.name)
        if path.suffix == ".png":
            read_image(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            Inversion.load(path)
        elif path.suffix == ".md":
            path.read_text()
    return names


def kill_at(argv: list[str], moment, out: Path, log: Path) -> None:
    """Start the command and SIGKILL it at `moment`: after that many seconds, or as soon as a file matching
    that glob pattern appears under out (a temporary name: mid-write; a final name: between two writes)."""
    with open(log, "w") as stream:
        process = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=stream, stderr=stream)
        deadline = time.monotonic() + (moment if isinstance(moment, float) else SUBPROCESS_TIMEOUT_S)
        while process.poll() is None and time.monotonic() < deadline:
            if isinstance(moment, str) and out.exists() and next(out.rglob(moment), None) is not None:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait()


MOMENTS = [0.5, 4.0, ".*.png.*.tmp", "*.png", "summary.json"]  # seconds, or the file whose appearance triggers it


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_killed_run_leaves_only_whole_files_and_restarts(tmp_path, moment):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "editing.run", *run_argv(out, "--save-inversion", out / "inv.safetensors")]
    argv[argv.index("--steps") + 1] = "20"
    kill_at(argv, moment, out, tmp_path / "killed.log")
    if out.exists():
        final_files_are_whole(out)
    restart = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert restart.returncode == 0, restart.stderr
    assert {"edit.png", "grid.png", "summary.json", "inv.safetensors"} <= set(final_files_are_whole(out))


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_killed_batch_leaves_only_whole_files_and_restarts(tmp_path, moment):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(PHOTO, photos / f"{name}.png")
    argv = [sys.executable, "-m", "editing.batch", "--images", str(photos), "--source-prompt", SOURCE,
            "--target-prompt", TARGET, "--out", str(out), "--model", "tiny-random", "--steps", "10",
            "--inner-steps", "2"]
    kill_at(argv, moment, out, tmp_path / "killed.log")
    if out.exists():
        final_files_are_whole(out)
    restart = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert restart.returncode == 0, restart.stderr
    final_files_are_whole(out)
    report = json.loads((out / "report.json").read_text())
    assert [e["status"] in ("done", "skipped") for e in report["images"]] == [True] * 3
