"""benchmarks.compare puts quality-suite runs side by side, with the figures the runs wrote."""
import json

import pytest

from benchmarks import compare, quality
from editing.cli import run_main
from editing.core.image_io import read_image
from helpers import help_examples


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A real (tiny) quality run, and a copy of its report as another model's with other figures."""
    old = tmp_path_factory.mktemp("old")
    argv = ["--model", "tiny-random", "--parts", "edits", "--n", "2", "--steps", "2", "--batch-size", "2",
            "--methods", "p2p:direct", "--out", str(old), "--quiet"]
    assert run_main(quality.main, argv) == 0
    report = json.loads((old / "quality.json").read_text())
    new = tmp_path_factory.mktemp("new")
    other = json.loads(json.dumps(report))
    other["fingerprint"] = "0123456789abcdef"
    other["training"] = {"attribute_accuracy": {"all": 0.99}, "vae_psnr_db_heldout": 32.17}
    other["results"][0].update(edit_accuracy=1.0, right_with_layout_kept=0.5, layout_kept=0.5, unchanged_psnr_db=30.0)
    (new / "quality.json").write_text(json.dumps(other))
    return old, new, report


def test_rows_are_the_runs_figures_in_the_order_given(two_runs, tmp_path, capsys):
    old, new, report = two_runs
    assert run_main(compare.main, [f"old={old}", f"new={new / 'quality.json'}", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "compare.md").read_text()
    assert capsys.readouterr().out == text
    body = text.splitlines()[2:]
    assert len(body) == 2 and body[0].startswith("| direct + P2P replace | old (") and "| new (0123456789abcdef) |" in body[1]
    first = report["results"][0]
    assert f"| {first['edit_accuracy']:.2f} | {first['right_with_layout_kept']:.2f} | {first['layout_kept']:.2f} |" in body[0]
    assert "| 0.99 | 32.17 | 2 (seed 1234" in body[1] and "| 1.00 | 0.50 | 0.50 | 30.00 |" in body[1]
    assert "| - | - | 2 (seed 1234" in body[0]  # a tiny random model has no training record
    picture = read_image(tmp_path / "compare.png")
    assert picture.shape[0] > 100 and picture.shape[1] > 600


def test_a_path_without_a_report_is_one_error_line(two_runs, tmp_path, capsys):
    old, _, _ = two_runs
    assert run_main(compare.main, [str(old), str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "is not a quality.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "bad.json").write_text("{}")
    assert run_main(compare.main, [str(tmp_path / "bad.json")]) == 2
    assert "is not a quality suite report" in capsys.readouterr().err


def test_help_has_a_worked_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    examples = help_examples(text, "python -m benchmarks.compare")
    assert examples and all(compare.build_parser().parse_args(e).runs for e in examples)
    runs = help_examples(text, "python -m benchmarks.quality")  # the runs it compares are valid commands too
    assert len(runs) == 2
    for argv in runs:
        quality.check_args(quality.build_parser().parse_args(argv))
