"""`aesampler report` and `aesampler compare` on run directories with damaged or foreign files.

Each test copies the shared tiny run, damages one file and checks the project's rule: one
`aesampler: error: ...` line naming the file and the problem (exit status 2, no traceback), and
the previous report left as it was. Files the report can read in part (a training log whose lines
differ, a stray picture in samples/) give a report instead of an error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli


def copy_run(tiny_run, tmp_path: Path, name: str = "copy") -> Path:
    _, run, _ = tiny_run
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def snapshot(run: Path) -> dict[str, bytes]:
    """report.html and the plots beside it."""
    files = [run / "report.html", *sorted((run / "report").iterdir())]
    return {str(f.relative_to(run)): f.read_bytes() for f in files}


def one_error(done, *expected: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("aesampler: error: "), done.stderr
    assert done.stderr.count("aesampler: error:") == 1
    for text in expected:
        assert text in done.stderr, (text, done.stderr)
    return done.stderr


def report_fails(run: Path, *expected: str) -> str:
    """`aesampler report RUN` is one error mentioning ``expected``; the old report stays."""
    before = snapshot(run)
    message = one_error(cli("report", str(run)), *expected)
    assert snapshot(run) == before
    return message


def report_works(run: Path) -> str:
    done = cli("report", str(run))
    assert done.returncode == 0, done.stderr
    return (run / "report.html").read_text()


def edit_json(file: Path, change) -> None:
    document = json.loads(file.read_text())
    change(document)
    file.write_text(json.dumps(document))


# ----------------------------------------------------------------------------------------------
# settings.json of samples/ and interpolation/


def test_sample_settings_that_aesampler_did_not_write_are_one_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "samples" / "settings.json").write_text('{"num_chains": 3}')
    message = report_fails(run, "settings.json", "is missing", "aesampler sample")
    assert "samples" in message


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.update(num_chains="12"), "'num_chains' is not a whole number"),
        (lambda s: s.update(seed=True), "'seed' is not a whole number"),
        (lambda s: s.update(checkpoint=None), "'checkpoint' is not text"),
        (lambda s: s.update(start=[1]), "'start' is not an object or null"),
        (lambda s: s.update(chain_corruption="gaussian"), "'chain_corruption' is not an object"),
        (lambda s: s.update(start_describes=5), "'start_describes' is not text"),
    ],
)
def test_sample_settings_of_the_wrong_types_are_one_error(tiny_run, tmp_path, change, expected):
    run = copy_run(tiny_run, tmp_path)
    edit_json(run / "samples" / "settings.json", change)
    report_fails(run, "settings.json", expected)


def test_interpolation_settings_are_checked_too(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    edit_json(run / "interpolation" / "settings.json", lambda s: s.update(steps="two"))
    report_fails(run, "interpolation", "settings.json", "'steps' is not a whole number")
    (run / "interpolation" / "settings.json").write_text("[1, 2]")
    report_fails(run, "settings.json", "does not hold a JSON object")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
        ('{"num_chains": ' + "9" * 5000 + "}", "cannot be read"),
    ],
)
def test_json_that_python_cannot_hold_is_one_error(tiny_run, tmp_path, content, expected):
    run = copy_run(tiny_run, tmp_path)
    (run / "samples" / "settings.json").write_text(content)
    report_fails(run, "settings.json", expected)
    (run / "samples" / "settings.json").unlink()
    (run / "metrics.json").write_text(content)
    report_fails(run, "metrics.json", expected)
    one_error(cli("compare", str(run)), "metrics.json", expected)


# ----------------------------------------------------------------------------------------------
# metrics.json


def _pop(*path: str):
    def change(document):
        for key in path[:-1]:
            document = document[key]
        del document[path[-1]]

    return change


def _set(value, *path: str):
    def change(document):
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value

    return change


QUALITY_CASES = [
    (_pop("reference"), "'reference' is missing"),
    (_pop("reference", "split"), "'reference.split' is missing"),
    (_set("40", "reference", "images"), "'reference.images' is not a whole number"),
    (_set("x", "reference", "novelty_of_held_out_images"), "'reference.novelty_of_held_out"),
    (_pop("settings", "num_chains"), "'settings.num_chains' is missing"),
    (_set(2.5, "settings", "bootstrap"), "'settings.bootstrap' is not a whole number"),
    (_set(95, "settings", "confidence"), "'settings.confidence' is not a number between 0"),
    (_set(float("nan"), "settings", "confidence"), "'settings.confidence'"),
    (_set([], "diagnostics"), "'diagnostics' is not an object"),
    (_set("1.0", "diagnostics", "rhat_median"), "'diagnostics.rhat_median' is not a number"),
    (_pop("diagnostics", "window"), "'diagnostics.window' is missing"),
    (_set([3], "diagnostics", "window"), "'diagnostics.window' is not a list of two"),
    (_set(1.5, "diagnostics", "ess_median"), "'diagnostics.ess_min' is missing"),
    (_set({"frechet": "yes"}, "lower_is_better"), "'lower_is_better.frechet' is not true"),
    (_set([], "lower_is_better"), "'lower_is_better' is not an object"),
    (_set(["pixels"], "feature_extractor"), "'feature_extractor' is not an object"),
    (_set(5, "chain"), "'chain' is not an object"),
    (_set("prior", "chain", "start"), "'chain.start' is not an object or null"),
    (_set([0, -1], "steps"), "'steps' is not a list of step numbers"),
    (_set(10**400, "metrics", "frechet", "0", "value"), "metric 'frechet' does not hold"),
    (_set(True, "metrics", "frechet", "0", "low"), "metric 'frechet' does not hold"),
]


@pytest.mark.parametrize("change, expected", QUALITY_CASES)
def test_metrics_json_is_checked_for_every_key_report_and_compare_read(
    tiny_run, tmp_path, change, expected
):
    run = copy_run(tiny_run, tmp_path)
    edit_json(run / "metrics.json", change)
    report_fails(run, "metrics.json", "not aesampler sample-quality metrics", expected)
    one_error(cli("compare", str(run)), "metrics.json", expected)


def test_metrics_without_novelty_or_diagnostics_still_give_a_report(tiny_run, tmp_path):
    """What evaluate writes without training images, or with too few steps, is valid."""
    run = copy_run(tiny_run, tmp_path)

    def change(document):
        document["reference"]["novelty_of_held_out_images"] = None
        document["diagnostics"] = {"note": "needs at least 8 recorded steps"}
        del document["chain"], document["feature_extractor"], document["lower_is_better"]

    edit_json(run / "metrics.json", change)
    page = report_works(run)
    assert "not measured" in page and "R-hat" not in page


def test_empty_metrics_give_a_report_with_a_note_and_compare_says_so(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "report" / "metrics.png").unlink()
    edit_json(run / "metrics.json", _set({}, "metrics"))
    page = report_works(run)
    assert "holds no metric values" in page
    assert "report/metrics.png" not in page and not (run / "report" / "metrics.png").exists()
    one_error(cli("compare", str(run)), "metrics.json", "no metric values to compare")
    other = copy_run(tiny_run, tmp_path, "other")
    done = cli("compare", str(run), str(other), "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    assert "**frechet**" in done.stdout and (tmp_path / "cmp" / "compare.png").is_file()


def test_metric_values_matplotlib_cannot_draw_are_one_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)

    def change(document):
        for step, sign in (("0", 1), ("1", -1), ("6", 1)):
            document["metrics"]["frechet"][step] = {
                "value": sign * 1e308,
                "low": -1e308,
                "high": 1e308,
            }

    edit_json(run / "metrics.json", change)
    report_fails(run, "metrics.json", "cannot plot")


def test_metric_values_that_are_not_finite_are_left_out_of_the_plot(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    edit_json(run / "metrics.json", _set(float("nan"), "metrics", "frechet", "0", "value"))
    edit_json(run / "metrics.json", _set(float("inf"), "metrics", "frechet", "1", "high"))
    assert "nan" in report_works(run)


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def test_training_log_lines_with_different_keys_are_plotted_key_by_key(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    lines = [
        {"event": "step", "step": 1, "epoch": 1, "loss": 3.0},
        {"event": "step", "step": 2, "epoch": 1, "reconstruction": 2.0, "loss": "n/a"},
        {"event": "step", "step": 3, "epoch": 1, "loss": None, "extra": [1, 2]},
        {"event": "step", "step": 10**400, "reconstruction": -1.0},
        {"event": "epoch", "step": 3, "valid/reconstruction": "x", "valid/loss": 2.5},
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    text += "\n" + "[" * 50_000 + "\n" + '{"step": ' + "1" * 5000 + "}\n"
    (run / "metrics.jsonl").write_text(text)
    (run / "report" / "losses.png").unlink()
    page = report_works(run)
    assert "report/losses.png" in page and (run / "report" / "losses.png").stat().st_size > 1000


def test_a_training_log_without_numbers_gives_no_loss_plot(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "metrics.jsonl").write_text('{"event": "step", "step": 1, "loss": "high"}\n')
    page = report_works(run)
    assert "holds no loss values" in page and "report/losses.png" not in page


# ----------------------------------------------------------------------------------------------
# samples/, recipe.yaml, the checkpoint


def test_pictures_in_samples_that_are_not_step_grids_are_ignored(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    shutil.copy(run / "samples" / "step-001.png", run / "samples" / "step-final.png")
    (run / "samples" / "step-7.png").mkdir()  # a folder, not a grid
    page = report_works(run)
    assert "step-final" not in page and "step-7.png" not in page
    assert "samples/step-006.png" in page


@pytest.mark.parametrize(
    "text, key",
    [
        ("model: 5\n", "'model'"),
        ("data: [digits]\n", "'data'"),
        ("corruption: gaussian\n", "'corruption'"),
    ],
)
def test_recipe_sections_that_are_not_mappings_are_one_error(tiny_run, tmp_path, text, key):
    run = copy_run(tiny_run, tmp_path)
    (run / "recipe.yaml").write_text(text)
    report_fails(run, "recipe.yaml", "is not a mapping", key)


def test_a_recipe_nested_too_deeply_is_one_error(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "recipe.yaml").write_text("[" * 50_000)
    report_fails(run, "recipe.yaml")


def test_checkpoint_info_without_step_shows_a_question_mark(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (info,) = (run / "checkpoints").glob("step-*/model.json")
    edit_json(info, _pop("step"))
    assert "step ?, epoch 0" in report_works(run)
    info.write_text('{"format": "aesampler-checkpoint", "version": 1, "x": ' + "7" * 5000 + "}")
    assert "unreadable" in report_works(run)
    info.write_text("{}")
    assert "unreadable" in report_works(run)


# ----------------------------------------------------------------------------------------------
# compare --out


@pytest.mark.parametrize("name", ["compare.md", "compare.png"])
def test_compare_never_replaces_files_in_out_without_overwrite(tiny_run, tmp_path, name):
    _, run, _ = tiny_run
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(b"my own notes")
    one_error(cli("compare", str(run), "--out", str(out)), name, "already exists", "--overwrite")
    assert (out / name).read_bytes() == b"my own notes"
    assert sorted(p.name for p in out.iterdir()) == [name]
    done = cli("compare", str(run), "--out", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (out / "compare.md").read_text().startswith("**")
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_a_folder_named_like_its_output(tiny_run, tmp_path):
    _, run, _ = tiny_run
    (tmp_path / "out" / "compare.png").mkdir(parents=True)
    one_error(
        cli("compare", str(run), "--out", str(tmp_path / "out"), "--overwrite"), "is a folder"
    )


def test_compare_writes_nothing_when_a_run_is_damaged(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    edit_json(run / "metrics.json", _pop("reference"))
    _, good, _ = tiny_run
    out = tmp_path / "out"
    one_error(cli("compare", str(good), str(run), "--out", str(out)), "metrics.json")
    assert not out.exists()


def test_compare_keeps_two_runs_of_the_same_name_apart(tiny_run, tmp_path):
    _, run, _ = tiny_run
    other = copy_run(tiny_run, tmp_path / "b", run.name)
    done = cli("compare", str(run), str(other))
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("| step"))
    assert header.count("|") == 4 and str(other) in header
