"""`python -m editing.batch` end to end on the embedded default model (64 px, 3 DDIM steps).

Most runs call `editing.batch.main` in-process through `editing.cli.run_main`; the killed run and the
2-process Accelerate run are real subprocesses (about a minute together on a 2-core CPU).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from editing import batch as batch_module, run
from editing.methods import inversion_config
from editing.inversion_cache import InversionCache
from editing.cli import run_main
from editing.core.image_io import load_image, read_image
from editing.core.loading import load_model

REPO = Path(__file__).resolve().parents[1]
SOURCE = "a red circle on a gray background"
TARGET = "a blue circle on a gray background"
TINY = ["--steps", "3", "--inner-steps", "2"]
GOOD = ("a-circle", "b-cat", "c-gray")
BAD = ("d-corrupt", "e-notes", "f-text")
CONTRACT_KEYS = ("method", "inversion", "model", "image", "source_prompt", "target_prompts", "seed", "steps",
                 "guidance", "timings_s", "reconstruction_psnr_db", "outputs")
SUBPROCESS_TIMEOUT_S = 600  # model loading alone takes ~20 s per process on a busy 2-core machine


def make_photos(folder: Path, bad: bool = True) -> Path:
    """Good photos (a toy-world scene, a cat, the cat in grey) and, with bad, a truncated PNG, a text file
    and a text file named .png."""
    folder.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "toy-red-circle.png", folder / "a-circle.png")
    shutil.copy(REPO / "examples" / "chelsea.png", folder / "b-cat.png")
    cv2.imwrite(str(folder / "c-gray.png"), cv2.imread(str(REPO / "examples" / "chelsea.png"), cv2.IMREAD_GRAYSCALE))
    if bad:
        data = (folder / "a-circle.png").read_bytes()
        (folder / "d-corrupt.png").write_bytes(data[:len(data) // 2])
        (folder / "e-notes.txt").write_text("a note, not a photo\n")
        (folder / "f-text.png").write_text("this is text named like a photo\n")
    return folder


def batch(argv) -> int:
    return run_main(batch_module.main, [str(a) for a in argv])


def folder_argv(images: Path, out: Path, *extra) -> list:
    return ["--images", images, "--source-prompt", SOURCE, "--target-prompt", TARGET, "--out", out, *TINY, *extra]


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def by_name(report: dict) -> dict:
    return {e["name"]: e for e in report["images"]}


def check_outputs(folder: Path) -> dict:
    """The run contract: summary.json with its keys, and every listed output a readable 64 px PNG."""
    summary = json.loads((folder / "summary.json").read_text())
    assert set(CONTRACT_KEYS) <= summary.keys()
    names = [n for v in summary["outputs"].values() for n in (v if isinstance(v, list) else [v])]
    assert {"source.png", "reconstruction.png", "grid.png"} <= set(names)
    for name in names:
        image = read_image(folder / name)
        assert image.shape[0] >= 64 and image.dtype == np.uint8
    assert read_image(folder / "source.png").shape == (64, 64, 3)
    assert not list(folder.glob(".*.tmp"))
    return summary


def cache_times(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (out / ".cache" / "inversions").glob("*.safetensors")}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.slow
def test_folder_edits_the_good_photos_reports_the_bad_and_reuses_inversions(tmp_path):
    photos, out = make_photos(tmp_path / "photos"), tmp_path / "out"
    assert batch(folder_argv(photos, out)) == 1
    report = report_of(out)
    entries = by_name(report)
    assert set(entries) == set(GOOD + BAD)
    for name in GOOD:
        assert entries[name]["status"] == "done" and entries[name]["inversion"] == "computed"
        assert set(entries[name]["timings_s"]) >= {"load", "inversion", "preliminary_training", "editing",
                                                   "generation", "total"}
        summary = check_outputs(out / name)
        assert entries[name]["reconstruction_psnr_db"] == summary["reconstruction_psnr_db"] > 10
        assert summary["target_prompts"] == [TARGET]
    for name in BAD:
        assert entries[name]["status"] == "failed" and not (out / name).exists()
        assert "cannot decode image" in entries[name]["error"] and name in entries[name]["error"]
    assert report["totals"] | {"wall_s": 0, "editing_time_s": 0, "mean_reconstruction_psnr_db": 0} == {
        "images": 6, "done": 3, "skipped": 0, "failed": 3, "inversions_computed": 3, "inversions_reused": 0,
        "wall_s": 0, "editing_time_s": 0, "mean_reconstruction_psnr_db": 0, "processes": 1}
    markdown = (out / "report.md").read_text()
    assert all(f"| {name} | " in markdown for name in GOOD + BAD) and "3 done, 0 skipped, 3 failed" in markdown
    inverted, finished = cache_times(out), {n: (out / n / "summary.json").stat().st_mtime_ns for n in GOOD}
    assert len(inverted) == 3

    # run again: the finished photos are skipped, untouched; the bad ones are reported again
    assert batch(folder_argv(photos, out)) == 1
    entries = by_name(report_of(out))
    assert [entries[n]["status"] for n in GOOD + BAD] == ["skipped"] * 3 + ["failed"] * 3
    assert finished == {n: (out / n / "summary.json").stat().st_mtime_ns for n in GOOD}

    # --overwrite edits again from the cached inversions: none is recomputed
    assert batch(folder_argv(photos, out, "--overwrite")) == 1
    entries = by_name(report_of(out))
    assert all(entries[n]["status"] == "done" and entries[n]["inversion"] == "reused" for n in GOOD)
    assert report_of(out)["totals"]["inversions_computed"] == 0 and cache_times(out) == inverted
    assert all((out / n / "summary.json").stat().st_mtime_ns > finished[n] for n in GOOD)
    for name in GOOD:
        check_outputs(out / name)

    # finished outputs are never replaced without --overwrite: other settings, or --no-resume
    other = folder_argv(photos, out)
    other[other.index(TARGET)] = "a green circle on a gray background"
    for argv, says in ((other, "other settings"), (folder_argv(photos, out, "--no-resume"), "--no-resume")):
        assert batch(argv) == 1
        entries = by_name(report_of(out))
        assert all(entries[n]["status"] == "failed" and says in entries[n]["error"] for n in GOOD)
        assert json.loads((out / "a-circle" / "summary.json").read_text())["target_prompts"] == [TARGET]


@pytest.mark.slow
def test_a_killed_run_restarts_and_finishes_without_inverting_again(tmp_path):
    photos, out = make_photos(tmp_path / "photos", bad=False), tmp_path / "out"
    argv = [sys.executable, "-m", "editing.batch", *map(str, folder_argv(photos, out, "--steps", "4"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not (out / GOOD[0] / "summary.json").exists():  # kill it the moment its first photo is finished
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "the batch did not finish its first photo in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = [n for n in GOOD if (out / n / "summary.json").exists()]
    assert finished[0] == GOOD[0] and len(finished) < len(GOOD), "the kill came too late to test a restart"
    inverted = cache_times(out)
    model = load_model(None, device="cpu")
    args = run.build_parser().parse_args(["--image", "-", "--source-prompt", SOURCE, "--target-prompt", TARGET, *TINY,
                                          "--steps", "4"])
    first = InversionCache(out).key(model, load_image(photos / "a-circle.png", model.resolution), SOURCE,
                                    inversion_config(run.request_from_args(args)))
    assert f"{first}.safetensors" in inverted

    assert batch(folder_argv(photos, out, "--steps", "4")) == 0
    report = report_of(out)
    entries = by_name(report)
    assert entries[GOOD[0]]["status"] == "skipped"
    assert all(entries[n]["status"] in ("done", "skipped") for n in GOOD)
    for name in GOOD:
        check_outputs(out / name)
    assert not [p for p in out.rglob("*.tmp") if ".cache" not in p.parts]
    # nothing inverted twice: the restart computed exactly the inversions the killed run had not stored
    assert report["totals"]["inversions_computed"] == len(GOOD) - len(inverted)
    assert {k: v for k, v in cache_times(out).items() if k in inverted} == inverted  # the first photo's included


def test_yaml_manifest_per_image_options_share_one_inversion(tmp_path):
    photos, out = make_photos(tmp_path / "photos", bad=False), tmp_path / "out"
    manifest = tmp_path / "edits.yaml"
    manifest.write_text(f"""
images:
  - image: a-circle.png
    name: circle blue
    source_prompt: {SOURCE}
    target_prompt: {TARGET}
  - image: a-circle.png          # the same photo again: its inversion comes from the cache
    name: circle/finetune
    source_prompt: {SOURCE}
    target_prompt: [{TARGET}, a red square on a gray background]
    method: null-finetune
    finetune_inner: 2
  - image: b-cat.png             # a prompt error: Replace needs equal word counts
    source_prompt: a cat on a blanket
    target_prompt: a big dog on a blanket
    edit: replace
""")
    assert batch(["--manifest", manifest, "--images", photos, "--out", out, *TINY]) == 1
    entries = by_name(report_of(out))
    assert set(entries) == {"circle_blue", "circle_finetune", "b-cat"}
    assert entries["circle_blue"]["inversion"] == "computed" and entries["circle_finetune"]["inversion"] == "reused"
    assert check_outputs(out / "circle_blue")["method"] == "p2p"
    summary = check_outputs(out / "circle_finetune")
    assert summary["method"] == "null-finetune" and summary["outputs"]["edit"] == ["edit-1.png", "edit-2.png"]
    assert entries["b-cat"]["status"] == "failed" and "equal word counts" in entries["b-cat"]["error"]
    assert len(cache_times(out)) == 2  # the circle once, the cat once (inverted before its prompts were refused)


def test_json_manifest_and_pie_bench_mapping(tmp_path):
    photos = make_photos(tmp_path / "photos", bad=False)
    manifest = tmp_path / "edits.json"
    manifest.write_text(json.dumps([{"image": str(photos / "a-circle.png"), "source_prompt": SOURCE,
                                     "target_prompt": TARGET, "inversion": "negative-prompt"}]))
    assert batch(["--manifest", manifest, "--out", tmp_path / "out-json", *TINY]) == 0
    assert check_outputs(tmp_path / "out-json" / "a-circle")["inversion"] == "negative-prompt"

    # PIE-Bench's layout: mapping_file.json beside annotation_images/<category>/<id>.jpg
    images = tmp_path / "PIE-Bench_v1" / "annotation_images"
    (images / "0_random_140").mkdir(parents=True)
    cv2.imwrite(str(images / "0_random_140" / "000000000000.jpg"), cv2.imread(str(photos / "a-circle.png")))
    cv2.imwrite(str(images / "0_random_140" / "000000000001.jpg"), cv2.imread(str(photos / "b-cat.png")))
    mapping = {
        "000000000000": {"image_path": "0_random_140/000000000000.jpg", "original_prompt": "a [red] circle on a "
                         "gray background", "editing_prompt": "a [blue] circle on a gray background",
                         "editing_instruction": "Make the circle blue", "editing_type_id": "0",
                         "blended_word": "red blue", "mask": [100, 20, 300, 40]},
        "000000000001": {"image_path": "0_random_140/000000000001.jpg", "original_prompt": "a [cat] sitting on a "
                         "blanket", "editing_prompt": "a [dog] sitting on a blanket", "editing_instruction": "",
                         "editing_type_id": "1", "blended_word": "cat dog", "mask": [0, 10]},
    }
    mapping_file = tmp_path / "PIE-Bench_v1" / "mapping_file.json"
    mapping_file.write_text(json.dumps(mapping))
    specs = batch_module.read_manifest(mapping_file, images)
    assert [s.options for s in specs] == [
        {"source_prompt": SOURCE, "target_prompt": [TARGET], "blend_words": ["red", "blue"]},
        {"source_prompt": "a cat sitting on a blanket", "target_prompt": ["a dog sitting on a blanket"],
         "blend_words": ["cat", "dog"]}]
    out = tmp_path / "out-pie"
    assert batch(["--manifest", mapping_file, "--images", images, "--out", out, *TINY]) == 0
    assert check_outputs(out / "000000000000")["target_prompts"] == [TARGET]
    assert check_outputs(out / "000000000001")["source_prompt"] == "a cat sitting on a blanket"


@pytest.mark.parametrize("argv, says", [
    ([], "give --images DIR"),
    (["--images", "{empty}", "--source-prompt", SOURCE, "--target-prompt", TARGET], "no files in"),
    (["--images", "{photos}", "--source-prompt", SOURCE], "give --target-prompt"),
    (["--images", "{photos}", "--target-prompt", TARGET], "needs --source-prompt"),
    (["--images", "{photos}", "--image", "{photos}/a-circle.png", "--source-prompt", SOURCE, "--target-prompt", TARGET],
     "--image edits one"),
    (["--images", "{photos}", "--source-prompt", SOURCE, "--target-prompt", TARGET, "--stepz", "3"],
     "unrecognized arguments: --stepz"),
    (["--images", "{photos}", "--source-prompt", SOURCE, "--target-prompt", TARGET, "--batch-size", "0"],
     "--batch-size must be at least 1"),
    (["--manifest", "{typo}", "--images", "{photos}"], "unknown option 'target'"),
    (["--manifest", "{photos}/missing.yaml"], "manifest not found"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv, says):
    photos = make_photos(tmp_path / "photos", bad=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "typo.yaml").write_text(f"- image: a-circle.png\n  source_prompt: {SOURCE}\n  target: {TARGET}\n")
    paths = {"empty": tmp_path / "empty", "photos": photos, "typo": tmp_path / "typo.yaml"}
    assert batch([a.format(**paths) for a in argv] + ["--out", tmp_path / "out"]) == 2
    assert says in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_output_names_are_safe_unique_and_deterministic(tmp_path):
    wanted = ["../../evil", "a b", "a_b", "A_B", "report.json", "", ".hidden", "x" * 300, "café", "/etc/passwd",
              "..", "a b"]
    specs = [batch_module.Spec(key=f"{k}:{w}", image="", name=w) for k, w in enumerate(wanted)]
    names = batch_module.output_names(specs)
    assert names == batch_module.output_names(specs)
    assert len({n.lower() for n in names}) == len(names) and "report.json" not in names
    for name in names:
        assert re.fullmatch(r"\w[\w.-]*", name) and len(name) <= 80
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert names[:3] == ["evil", "a_b", names[2]] and names[2].startswith("a_b-") and names[8] == "café"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_edit_every_image_exactly_once(tmp_path):
    photos, out = make_photos(tmp_path / "photos", bad=False), tmp_path / "out"
    (photos / "d-corrupt.png").write_bytes((photos / "a-circle.png").read_bytes()[:300])
    # --multi_gpu selects torch's multi-process launcher; without CUDA the batch asks Accelerate for gloo on the CPU
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "editing.batch"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*launch, *map(str, folder_argv(photos, out))], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 1, done.stderr[-3000:]  # the corrupt photo failed; the others were edited
    report = report_of(out)
    names = [e["name"] for e in report["images"]]
    assert names == [*GOOD, "d-corrupt"] and report["totals"]["processes"] == 2
    shards = [[e["name"] for e in json.loads((out / ".reports" / f"process-{k}-of-2.json").read_text())["images"]]
              for k in range(2)]
    assert shards == [names[0::2], names[1::2]]
    assert [e["process"] for e in report["images"]] == [0, 1, 0, 1]
    for name in GOOD:
        assert by_name(report)[name]["status"] == "done"
        check_outputs(out / name)
    assert by_name(report)["d-corrupt"]["status"] == "failed"


@pytest.mark.parametrize("change, check", [
    (["--inversion", "direct"], lambda summary: summary["inversion"] == "direct"),
    (["--cross-replace", "0.3"], lambda summary: summary.get("request", {}).get("cross_replace") == 0.3),
])
def test_a_finished_edit_with_other_pixel_options_is_never_skipped(tmp_path, change, check):
    """The bug: a re-run with --inversion direct (or another --cross-replace) into the same --out reported the
    old null-text edits as skipped. Now such a folder is refused without --overwrite and edited with it."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(REPO / "examples" / "toy-red-circle.png", photos / "a-circle.png")
    assert batch(folder_argv(photos, out)) == 0
    first = json.loads((out / "a-circle" / "summary.json").read_text())
    assert not check(first)
    assert batch(folder_argv(photos, out, *change)) == 1
    entry = by_name(report_of(out))["a-circle"]
    assert entry["status"] == "failed" and "other settings" in entry["error"]
    assert json.loads((out / "a-circle" / "summary.json").read_text()) == first  # untouched
    assert batch(folder_argv(photos, out, *change, "--overwrite")) == 0
    assert by_name(report_of(out))["a-circle"]["status"] == "done"
    assert check(check_outputs(out / "a-circle"))


class Rank:
    """One process of a simulated `accelerate launch` (threads stand in for the processes)."""

    def __init__(self, index: int, count: int, barrier):
        self.process_index, self.num_processes, self.barrier = index, count, barrier
        self.is_main_process = index == 0

    def wait_for_everyone(self):
        self.barrier.wait(timeout=30)


def test_a_second_launch_on_the_same_out_is_refused_by_every_process(tmp_path):
    """Two multi-process launches on one --out: the first holds the lock; each process of the second stops."""
    import threading

    from editing.batch import batch_lock
    from editing.core.errors import UserError
    from editing.core.outputs import OutputFolder

    out = OutputFolder.prepare(tmp_path / "out")
    first_in, release = threading.Event(), threading.Event()
    outcomes: dict = {}

    def run(name: str, rank: Rank, launch: str, hold: bool):
        try:
            with batch_lock(out, rank, launch):
                outcomes[name] = "ran"
                if hold:
                    first_in.set()
                    release.wait(timeout=30)
        except UserError as exc:
            outcomes[name] = str(exc)

    def launch(tag: str, hold: bool) -> list:
        barrier = threading.Barrier(2)
        return [threading.Thread(target=run, args=(f"{tag}{k}", Rank(k, 2, barrier), f"launch {tag}", hold))
                for k in range(2)]

    first = launch("A", hold=True)
    for t in first:
        t.start()
    assert first_in.wait(timeout=30)
    second = launch("B", hold=False)
    for t in second:
        t.start()
    for t in second:
        t.join(timeout=30)
    release.set()
    for t in first:
        t.join(timeout=30)
    assert outcomes["A0"] == outcomes["A1"] == "ran"
    for name in ("B0", "B1"):
        assert "another editing.batch (process launch A)" in outcomes[name], outcomes
    with batch_lock(out, Rank(0, 1, None), "later"):  # released: the next batch runs
        pass


@pytest.mark.parametrize("fingerprint", ["0000000000000000", None])
def test_an_edit_by_other_weights_of_the_same_model_name_is_never_skipped(tmp_path, fingerprint):
    """The bug: summary.json named the model ("default") but not its weights, so after the default model was
    retrained a re-run reported the old model's edits as done. Now the fingerprint must match too (a summary
    written before it was recorded never does)."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(REPO / "examples" / "toy-red-circle.png", photos / "a-circle.png")
    assert batch(folder_argv(photos, out)) == 0
    path = out / "a-circle" / "summary.json"
    summary = json.loads(path.read_text())
    assert len(summary["model_fingerprint"]) == 16
    assert batch(folder_argv(photos, out)) == 0 and by_name(report_of(out))["a-circle"]["status"] == "skipped"
    if fingerprint is None:
        del summary["model_fingerprint"]
    else:
        summary["model_fingerprint"] = fingerprint
    path.write_text(json.dumps(summary))
    assert batch(folder_argv(photos, out)) == 1
    entry = by_name(report_of(out))["a-circle"]
    assert entry["status"] == "failed" and "other settings" in entry["error"]
