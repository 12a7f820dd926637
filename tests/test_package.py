"""The package: a wheel built from a clean copy of the tree installs into a fresh virtual environment, and its
console scripts edit a photo on the embedded default model from outside the repository; `pip install -e .`
works too.

Offline: the venvs see the already-installed dependencies (--system-site-packages), the toolkit itself goes in
with --no-deps, and the wheel is built with the installed setuptools (--no-build-isolation).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from editing.core.model import DEFAULT_MODEL_DIR, TOKENIZER_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SOURCE = "a red circle on a gray background"
TARGET = "a blue circle on a gray background"
CONTRACT_FILES = ("source.png", "reconstruction.png", "edit.png", "grid.png", "summary.json")
TIMEOUT_S = 900  # one command at most (the CPU test machines are shared and slow)


def call(command: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run a command with the repository off the import path (no PYTHONPATH), offline, on one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, **kwargs)


def check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A clean copy of the tree: the files git tracks (and new ones it does not ignore), nothing built."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, timeout=60)
    assert listed.returncode == 0, f"the package test copies the files git tracks: {listed.stderr.decode()}"
    copy = tmp_path_factory.mktemp("tree") / "editing-toolkit"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the work tree is not part of it
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    return copy


def venv(path: Path) -> Path:
    """A virtual environment over this interpreter's packages (pip included); returns its python.

    --system-site-packages shows the base interpreter's packages; a .pth file adds this interpreter's own
    (they differ when the tests run inside a virtual environment). The venv's own site-packages come first."""
    check(call([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", path], cwd=path.parent))
    python = path / "bin" / "python"
    purelib = check(call([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path))
    (Path(purelib.stdout.strip()) / "outer-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def located(python: Path, cwd: Path) -> dict:
    """Where `python` finds the toolkit and its data: the package file, the tokenizer and the default model."""
    code = ("import json, editing, editing.core.model as m; print(json.dumps({'editing': editing.__file__, "
            "'tokenizer': str(m.TOKENIZER_DIR), 'model': str(m.DEFAULT_MODEL_DIR)}))")
    return json.loads(check(call([python, "-c", code], cwd=cwd)).stdout.strip().splitlines()[-1])


def is_under(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_the_wheel_installs_and_its_console_script_edits_a_photo(tree, tmp_path):
    assert importlib.util.find_spec("setuptools"), "building the wheel offline needs setuptools: " \
        "pip install 'setuptools>=70.1' (.ci/run does)"
    dist = tmp_path / "dist"
    check(call([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, "."],
               cwd=tree))
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    python = venv(tmp_path / "venv")
    check(call([python, "-m", "pip", "install", "--no-deps", wheels[0]], cwd=tmp_path))
    elsewhere = tmp_path / "elsewhere"  # not the repository: it is not on the import path
    elsewhere.mkdir()

    where = located(python, elsewhere)
    site = tmp_path / "venv"
    assert is_under(where["editing"], site) and not is_under(where["editing"], REPO), where
    for key in ("tokenizer", "model"):  # Path(__file__) parents resolve inside site-packages
        assert is_under(where[key], site) and Path(where[key]).is_dir(), where
    assert sorted(p.name for p in Path(where["tokenizer"]).iterdir()) == sorted(p.name for p in TOKENIZER_DIR.iterdir())
    assert sorted(p.relative_to(where["model"]).as_posix() for p in Path(where["model"]).rglob("*") if p.is_file()) \
        == sorted(p.relative_to(DEFAULT_MODEL_DIR).as_posix() for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())

    bin_dir = site / "bin"
    done = check(call([bin_dir / "edit-photo", "--image", REPO / "examples" / "toy-red-circle.png",
                       "--source-prompt", SOURCE, "--target-prompt", TARGET, "--steps", 4, "--inner-steps", 1,
                       "--quiet", "--out", "OUT"], cwd=elsewhere))
    out = elsewhere / "OUT"
    assert sorted(p.name for p in out.iterdir()) == sorted(CONTRACT_FILES), done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["model"], summary["source_prompt"], summary["target_prompts"], summary["steps"]) \
        == ("default", SOURCE, [TARGET], 4)
    assert summary["outputs"]["edit"] == ["edit.png"]

    # the same exit codes as the `python -m` forms: bad usage is exit 2 and one `error:` line
    for script, args in (("edit-photos", ["--images", elsewhere / "no-such-folder", "--source-prompt", SOURCE,
                                          "--target-prompt", TARGET, "--out", "OUT2"]),
                         ("multires-ti", ["sample", "--concepts", "nowhere", "--prompt", "a <x> on a gray background"])):
        done = call([bin_dir / script, *args], cwd=elsewhere)
        assert done.returncode == 2, (script, done.stderr[-2000:])
        assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in done.stderr
    assert not (elsewhere / "OUT2").exists()


def test_an_editable_install_runs_from_the_tree(tree, tmp_path):
    python = venv(tmp_path / "venv")
    check(call([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", tree], cwd=tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = located(python, elsewhere)
    assert is_under(where["editing"], tree), where
    assert Path(where["tokenizer"]) == (tree / "editing" / "assets" / "clip_tokenizer").resolve()
    assert Path(where["model"]) == (tree / "toyworld" / "model").resolve()
    done = call([tmp_path / "venv" / "bin" / "edit-photo", "--image", elsewhere / "missing.png",
                 "--source-prompt", SOURCE, "--target-prompt", TARGET, "--out", "OUT"], cwd=elsewhere)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "missing.png" in done.stderr.strip().splitlines()[-1] and not (elsewhere / "OUT").exists()
