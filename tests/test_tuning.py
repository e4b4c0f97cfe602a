"""Each sampler entry's batch-norm mode and chain corruption, and the search behind
``sampling.start: auto`` (``aesampler tune``)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aesampler.recipe import load_recipe
from aesampler.recipe.loader import RecipeError
from aesampler.tuning import PAPER, TuningError, format_tuning, grid, read_choice, resolve_start
from aesampler.workflow import build_components, fit_sampler

from .conftest import cli

# Small rounds on the tiny model: every configuration runs 2 steps.
TUNE = [
    "sampling.steps=2",
    "sampling.record=[0, 1, 2]",
    "tune.num_chains=[20, 40]",
    "tune.reference_size=40",
    "tune.samplers=[prior, {name: ex_post_gmm, components: 2}]",
]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    recipe, run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return recipe, copy


def _recipe(recipe, run, *overrides):
    return load_recipe(recipe, [f"output.dir={run}", *overrides])


def test_an_entry_sets_its_batchnorm_mode_and_corruption(run_copy):
    recipe, run = run_copy
    r = _recipe(
        recipe,
        run,
        "sampling.start={name: ex_post_gmm, components: 2, batchnorm: running, corruption: none}",
    )
    assert r.sampling.start.setting(r.sampling.batchnorm) == ("running", "none")
    assert r.sampling.start.params == {"components": 2}  # not passed to the sampler
    parts = build_components(r)
    assert parts.setting(r.sampling.start) == ("running", "none")
    from aesampler.corruptions import IdentityCorruption

    assert isinstance(parts.chain_for("none").transition.corruption, IdentityCorruption)
    assert not isinstance(parts.chain_for("training").transition.corruption, IdentityCorruption)
    # The chain of an entry without corruption is the paper's Eq. 1: the same chain as one
    # built without any corruption, whatever the recipe's training corruption.
    start = parts.start_sampler(print)
    result = parts.run_shard(start, 0, 8, seed=1, steps=2, record=[0, 2])
    bare = _recipe(
        recipe, run, "sampling.start={name: ex_post_gmm, components: 2}", "corruption=null"
    )
    plain = build_components(bare).chain.run(
        n=8, start=start, steps=2, record=[0, 2], batchnorm="running", seed=1, out_device="cpu"
    )
    torch.testing.assert_close(result.z[2], plain.z[2])
    corrupted = parts.run_shard(
        start, 0, 8, seed=1, steps=2, record=[0, 2], setting=("running", "training")
    )
    assert not torch.allclose(corrupted.z[2], result.z[2])


def test_fitted_states_are_kept_apart_by_batchnorm_mode(run_copy):
    recipe, run = run_copy
    r = _recipe(recipe, run)
    parts = build_components(r)
    specs = r.tune.samplers  # defaults: the prior and mixtures of 10 and 30 components
    gmm = type(specs[1])(name="ex_post_gmm", components=2, batchnorm="batch")
    fit_sampler(parts, gmm, print)
    fit_sampler(parts, gmm.model_copy(update={"batchnorm": "running"}), print)
    # The corruption acts after the draws: it does not change what the sampler fits.
    details: dict = {}
    fit_sampler(parts, gmm.model_copy(update={"corruption": "none"}), print, details)
    assert details["loaded"]
    folders = sorted((run / "fitted").glob("ex_post_gmm-*"))
    assert len(folders) == 2
    modes = {json.loads((f / "settings.json").read_text())["batchnorm"] for f in folders}
    assert modes == {"batch", "running"}
    means = [load_file(str(f / "state.safetensors"))["means"] for f in folders]
    assert not torch.allclose(means[0], means[1])  # fitted on other encodings


def test_compare_samplers_runs_each_entry_in_its_own_setting(run_copy):
    _, run = run_copy
    done = cli(
        "compare-samplers",
        str(run),
        "--quiet",
        "samplers.compare=[prior, {name: prior, batchnorm: running, corruption: none}]",
        "samplers.steps=[0, 1]",
        "evaluate.bootstrap=0",
    )
    assert done.returncode == 0, done.stderr
    comparison = json.loads((run / "samplers" / "comparison.json").read_text())
    rows = {row["label"]: row for row in comparison["samplers"]}
    assert rows["prior"]["setting"] == {"batchnorm": "batch", "corruption": "training"}
    assert rows["prior-running-none"]["setting"] == {"batchnorm": "running", "corruption": "none"}
    # Same draws at step 0 in another BN mode decode to other images.
    x = {
        label: load_file(str(run / "samplers" / label / "samples.safetensors"))["x/step-000"]
        for label in rows
    }
    assert not torch.allclose(x["prior"], x["prior-running-none"])
    assert cli("report", str(run)).returncode == 0


def test_the_recipe_checks_the_new_keys(run_copy):
    recipe, run = run_copy
    bad = [
        "sampling.start={name: auto, batchnorm: batch}",
        "tune.samplers=[encodings, {name: prior, batchnorm: runing}]",
        "tune.num_chains=[100, 50]",
        "tune.corruption=[none, none]",
    ]
    with pytest.raises(RecipeError) as caught:
        _recipe(recipe, run, *bad)
    text = str(caught.value)
    assert "sampling.start.batchnorm: sampling.start: auto chooses" in text
    assert "tune.samplers.0: sampler 'encodings' draws encodings of real images" in text
    assert "tune.samplers.1.batchnorm: Input should be 'batch' or 'running'" in text
    assert "tune.num_chains" in text and "must increase" in text
    assert "tune.corruption: Value error, each value may be listed once" in text
    ok = _recipe(recipe, run, "sampling.start=auto")
    assert ok.sampling.tuned and ok.resolved()["sampling"]["start"] == {"name": "auto"}


def test_the_grid_always_holds_the_papers_configuration(run_copy):
    recipe, run = run_copy
    r = _recipe(recipe, run, "tune.samplers=[{name: ex_post_gmm, batchnorm: running}]")
    labels = [c.label for c in grid(r)]
    assert labels == [
        "ex_post_gmm-running-training",
        "ex_post_gmm-running-none",
        "prior-batch-training",
    ]
    assert [c.paper for c in grid(r)] == [False, False, True]
    # Without a chain corruption, "none" is the same chain as "training": searched once.
    r = _recipe(recipe, run, "corruption=null")
    assert [c.label for c in grid(r)] == [
        "prior-batch-training",
        "prior-running-training",
        "ex_post_gmm-batch-training",
        "ex_post_gmm-running-training",
        "ex_post_gmm-batch-training-2",  # the default's second mixture, of 30 components
        "ex_post_gmm-running-training-2",
    ]


# One round over the prior alone: the cheapest search, for tests of what follows a search.
QUICK = [*TUNE[:2], "tune.num_chains=[20]", "tune.reference_size=40", "tune.samplers=[prior]"]


@pytest.fixture(scope="module")
def tuned(tiny_run, tmp_path_factory):
    recipe, run, _ = tiny_run
    copy = tmp_path_factory.mktemp("tuned") / "run"
    shutil.copytree(run, copy)
    done = cli("tune", str(copy), "--quiet", *TUNE)
    assert done.returncode == 0, done.stderr
    return recipe, copy, done


def test_tune_searches_by_halving_and_records_its_choice(tuned):
    _, run, done = tuned
    document = json.loads((run / "tuning" / "tuning.json").read_text())
    candidates = {c["label"]: c for c in document["candidates"]}
    assert len(candidates) == 8  # 2 samplers x 2 BN modes x 2 corruptions
    first, second = document["rounds"]
    assert (first["chains"], second["chains"]) == (20, 40)
    assert len(first["configurations"]) == 8
    assert len(second["configurations"]) in (3, 4)  # a third, and the paper's
    assert "prior-batch-training" in second["configurations"]
    choice = document["choice"]
    finalist = candidates[choice["label"]]["rounds"][-1]
    best = min(
        (v, c["label"], int(t))
        for c in document["candidates"]
        if len(c["rounds"]) == 2
        for t, v in c["rounds"][-1]["frechet"].items()
        if not c["rounds"][-1]["copying_flag"].get(t)
    )
    assert (choice["label"], choice["steps"]) == best[1:]
    assert finalist["frechet"][str(choice["steps"])] == choice["frechet"]
    assert choice["frechet"] <= document["paper"]["frechet"]
    # Both configurations measured on the test split, with the evaluate section's metrics.
    test = document["test"]
    assert test["split"] == "test" and test["reference"]["split"] == "test"
    assert set(test["chosen"]["metrics"]) >= {"frechet", "mmd_learned", "novelty"}
    assert set(document["yardstick"]) == {"batch", "running"}
    assert "chosen:" in done.stdout and "(paper)" in format_tuning(document)
    for name in ("tuning.png", "chosen.png", "paper.png"):
        assert (run / "tuning" / name).stat().st_size > 0
    found = read_choice(run)
    assert (found.label, found.steps) == (choice["label"], choice["steps"])
    assert cli("report", str(run)).returncode == 0
    page = (run / "report.html").read_text()
    assert "How this model samples best" in page and "tuning/chosen.png" in page


def test_sampling_auto_samples_with_the_choice(tuned, tmp_path):
    recipe, tuned_run, _ = tuned
    run = tmp_path / "run"
    shutil.copytree(tuned_run, run)
    done = cli("sample", str(run), "--quiet", "--overwrite", "sampling.start=auto", *TUNE)
    assert done.returncode == 0, done.stderr
    settings = json.loads((run / "samples" / "settings.json").read_text())
    choice = json.loads((run / "tuning" / "tuning.json").read_text())["choice"]
    assert settings["tuned"]["label"] == choice["label"]
    assert settings["start"] == choice["start"]
    assert settings["chain"] == {
        "batchnorm": choice["start"]["batchnorm"],
        "corruption": choice["start"]["corruption"],
    }
    assert settings["steps"] == choice["steps"]
    assert max(settings["steps_recorded"]) == choice["steps"]
    tensors = load_file(str(run / "samples" / "samples.safetensors"))
    assert f"x/step-{choice['steps']:03d}" in tensors
    # Other tune settings: the record no longer applies, and it is not replaced unasked ...
    key = json.loads((run / "tuning" / "tuning.json").read_text())["key"]
    other = _recipe(recipe, run, "sampling.start=auto", *QUICK)
    with pytest.raises(TuningError, match="holds a search for another model or other settings"):
        resolve_start(build_components(other), progress=False, log=lambda _: None)
    assert json.loads((run / "tuning" / "tuning.json").read_text())["key"] == key
    # ... but with --overwrite, which replaces the run's outputs, the search runs again.
    again = cli("sample", str(run), "--quiet", "--overwrite", "sampling.start=auto", *QUICK)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "tuning" / "tuning.json").read_text())["key"] != key


def test_the_search_never_reads_the_test_split(run_copy, monkeypatch):
    """A test split of noise cannot change the choice, and is read only after it."""
    recipe, run = run_copy
    from aesampler import workflow

    events: list[str] = []
    real = workflow.Components.dataset

    def dataset(self, split):
        events.append(f"read {split}")
        data = real(self, split)
        if split == "test" and poison:
            noise = torch.rand(
                len(data), *data[0][0].shape, generator=torch.Generator().manual_seed(0)
            )
            return torch.utils.data.TensorDataset(noise, torch.zeros(len(data), dtype=torch.long))
        return data

    monkeypatch.setattr(workflow.Components, "dataset", dataset)
    choices = []
    for poison in (False, True):
        events.clear()
        r = _recipe(recipe, run / str(poison), *QUICK, "tune.num_chains=[20, 30]")
        parts = build_components(r, checkpoint=run)
        choice = resolve_start(parts, progress=False, log=events.append)
        choices.append((choice.label, choice.steps, choice.spec))
        chose = next(i for i, e in enumerate(events) if e.startswith("tune: chose"))
        assert "read test" not in events[:chose]
        assert "read test" in events[chose:]  # the test scores, for the report
    assert choices[0] == choices[1]


def test_an_unfinished_choice_is_a_clear_error(run_copy):
    recipe, run = run_copy
    parts = build_components(_recipe(recipe, run, "sampling.start=auto"))
    with pytest.raises(Exception, match="no configuration has been chosen yet"):
        parts.start_sampler(print)
    (run / "tuning").mkdir()
    (run / "tuning" / "tuning.json").write_text('{"format": "something else"}')
    with pytest.raises(TuningError, match="is not a record aesampler tune wrote"):
        read_choice(run)
    assert PAPER.setting("running") == ("batch", "training")


def test_run_with_start_auto_trains_searches_samples_and_reports(tiny_run, tmp_path):
    recipe, _, _ = tiny_run
    out = tmp_path / "run"
    done = cli("run", str(recipe), "--out", str(out), "--quiet", "sampling.start=auto", *QUICK)
    assert done.returncode == 0, done.stderr
    choice = json.loads((out / "tuning" / "tuning.json").read_text())["choice"]
    settings = json.loads((out / "samples" / "settings.json").read_text())
    assert settings["tuned"]["label"] == choice["label"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chain"]["start"]["name"] == choice["start"]["name"]
    assert metrics["chain"]["batchnorm"] == choice["start"]["batchnorm"]
    assert "chosen:" in done.stdout  # the search's table
    assert "How this model samples best" in (out / "report.html").read_text()


def test_flagged_steps_are_never_best():
    from aesampler.tuning import Candidate

    c = Candidate("x", PAPER, True)
    c.rounds.append({"frechet": {"0": 5.0, "1": 3.0, "2": 4.0}, "copying_flag": {"1": True}})
    assert c.best() == (2, 4.0)  # step 1 scores best but copies
    c.rounds.append({"frechet": {"0": 5.0, "1": 3.0}, "copying_flag": {"0": True, "1": True}})
    assert c.best() == (-1, float("inf"))
    assert c.best_flagged_or_not() == (1, 3.0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d["settings"].pop("score"), "'settings.score' is missing"),
        (lambda d: d["cost"].update(search_seconds="x"), "'cost.search_seconds' is not a number"),
        (lambda d: d.update(candidates=[]), "'candidates' is not a list of objects"),
        (lambda d: d["choice"].update(steps=-1), "'choice.steps' is not a whole number from 0"),
    ],
)
def test_the_report_refuses_a_damaged_search_naming_the_key(tuned, tmp_path, damage, message):
    """tuning.json is checked by the same pydantic model its writer built it with."""
    from aesampler.report import ReportError, write_report

    _, run, _ = tuned
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "tuning" / "tuning.json"
    document = json.loads(path.read_text())
    damage(document)
    path.write_text(json.dumps(document))
    with pytest.raises(ReportError) as caught:
        write_report(copy)
    assert str(caught.value).startswith(f"{str(path)!r} is not a search aesampler tune wrote: ")
    assert message in str(caught.value)
    assert str(caught.value).endswith("re-create it with aesampler tune --overwrite")
