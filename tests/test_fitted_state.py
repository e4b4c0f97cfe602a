"""A fitted sampler state is used only if it is what was fitted (issue 17, item 4).

``fitted/NAME-KEY/settings.json`` holds a checksum of ``state.safetensors``'s tensors, and each
sampler checks its own state (:meth:`Sampler.check_state`). A state that was changed, damaged or
fails the check is fitted again, with one log line naming the file; a fit that itself gives a
state with problems is refused with one message (exit 2) and nothing is saved. The attacks below
are those of a hostile tester, each run through the CLI in this process.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import aesampler
from aesampler.models import AAE
from aesampler.samplers import (
    AAEDiscriminator,
    EncodingsSampler,
    ExPostGMM,
    LatentFlow,
    LocalGlobal,
    PosteriorMixture,
    PriorSampler,
    RatioCorrected,
    Sampler,
    SamplerContext,
    SamplerError,
)
from aesampler.workflow import STATE_CHECKSUM, state_digest

from .conftest import cli

GMM = ["sampling.start.name=ex_post_gmm", "sampling.start.components=2"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# The checksum


def test_the_digest_covers_names_dtypes_shapes_and_bytes_in_any_order():
    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([True, False])}
    digest = state_digest(state)
    assert digest == state_digest(dict(reversed(state.items())))  # the order of the names
    assert len(digest) == 64 and digest == state_digest({k: v.clone() for k, v in state.items()})
    for changed in (
        {**state, "c": state["b"]},  # a name more
        {"B": state["b"], "a": state["a"]},  # another name
        {**state, "b": state["b"].double()},  # another dtype
        {**state, "b": state["b"].reshape(3, 2)},  # another shape, the same bytes
        {**state, "b": state["b"] * (1 + 1e-7)},  # other bytes
        {**state, "a": state["a"].to(torch.uint8)},  # bool and uint8 share their bytes
    ):
        assert state_digest(changed) != digest
    # Every dtype a state may hold, also those numpy has not, and empty and 0-d tensors.
    assert state_digest({"x": torch.ones(2, dtype=torch.bfloat16), "y": torch.zeros(0, 3)})
    assert state_digest({"x": torch.tensor(1.5)}) != state_digest({"x": torch.tensor([1.5])})


# ----------------------------------------------------------------------------------------------
# Each sampler checks its own state: a valid one has no problems, a broken one names them


def quiet(encodings: dict[str, torch.Tensor], model=None, posteriors=None) -> SamplerContext:
    context = SamplerContext.from_encodings(encodings, posteriors=posteriors, log=lambda _: None)
    context.model = model
    return context


def blobs(n: int = 240, d: int = 2, seed: int = 0) -> torch.Tensor:
    """Two Gaussian blobs in ``d`` dimensions."""
    g = gen(seed)
    centres = torch.tensor([[-3.0] * d, [3.0] * d])
    return centres[torch.arange(n) % 2] + torch.randn(n, d, generator=g)


def context_for(kind: str) -> SamplerContext:
    train, valid = blobs(240, seed=0), blobs(60, seed=1)
    if kind == "posterior":
        stds = 0.3 + torch.rand(240, 2, generator=gen(2))
        return quiet({"train": train, "valid": valid}, posteriors={"train": (train, stds)})
    if kind == "aae":
        torch.manual_seed(0)
        model = AAE(image_size=8, channels=1, latent_dim=2, width=4, adversary_hidden=8)
        return quiet({"train": train, "valid": valid}, model)
    return quiet({"train": train, "valid": valid, "test": valid})


def edit(name: str, change):
    """A break of a state: ``name``'s tensor replaced by ``change(tensor)``."""

    def apply(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**state, name: change(state[name].clone())}

    return apply


def set_at(index, value):
    def change(tensor):
        tensor[index] = value
        return tensor

    return change


def triangle_above(tensor):
    tensor[:, 0, 1] = 0.5
    return tensor


SMALL_FLOW = dict(flow="maf", transforms=1, hidden=8, epochs=2, pca_dims=None, components=2)
SMALL_RATIO = dict(pca_dims=None, hidden=8, epochs=2, patience=1, proposal_draws=1)
SAMPLERS = {
    "encodings": (EncodingsSampler, "plain"),
    "ex_post_gmm": (lambda: ExPostGMM(components=2), "plain"),
    "posterior_mixture": (lambda: PosteriorMixture(grid=3), "posterior"),
    "latent_flow": (lambda: LatentFlow(**SMALL_FLOW), "plain"),
    "ratio_corrected": (
        lambda: RatioCorrected(proposal={"name": "ex_post_gmm", "components": 2}, **SMALL_RATIO),
        "plain",
    ),
    "aae_discriminator": (lambda: AAEDiscriminator(method="sir"), "aae"),
    "local_global": (
        lambda: LocalGlobal(components=2, iterations=1, burn_in=0, **SMALL_RATIO),
        "plain",
    ),
}
BREAKS = [
    ("encodings", edit("pool", set_at((0, 0), math.nan)), "pool holds 1 NaN or infinite value"),
    ("encodings", edit("pool", lambda t: t[:0]), "pool (0, 2) holds no encodings"),
    ("ex_post_gmm", edit("weights", lambda t: -t), "weights has values not above 0"),
    ("ex_post_gmm", edit("weights", lambda t: t / 2), "weights sum to 0.5, not 1"),
    ("ex_post_gmm", edit("scale_tril", lambda t: -t), "scale_tril have diagonal values not above"),
    ("ex_post_gmm", edit("scale_tril", triangle_above), "scale_tril are not lower-triangular"),
    ("ex_post_gmm", edit("means", set_at((1, 0), math.nan)), "means holds 1 NaN or infinite"),
    ("ex_post_gmm", edit("scale_tril", lambda t: t[:, :1]), "are not (K,), (K, D) and (K, D, D)"),
    ("posterior_mixture", edit("stds", set_at((3, 1), 0.0)), "stds has 1 value not above 0"),
    ("posterior_mixture", edit("scale", lambda t: -t), "scale has 1 value not above 0"),
    ("posterior_mixture", edit("form", lambda t: t + 5), "form is not one of"),
    ("latent_flow", edit("scales", lambda t: -t), "scales has 2 values not above 0"),
    ("latent_flow", edit("axes", lambda t: 2 * t), "axes are not orthonormal"),
    ("latent_flow", edit("flow.base.weights", lambda t: -t), "flow.base.weights has values"),
    ("ratio_corrected", edit("scale", lambda t: -t), "scale (the calibration's temperature)"),
    ("ratio_corrected", edit("proposal.scale_tril", lambda t: -t), "proposal.scale_tril have"),
    ("ratio_corrected", edit("classifier.net.0.weight", lambda t: t / 0), "classifier.net.0.we"),
    ("aae_discriminator", edit("log_bound", lambda t: t / 0), "log_bound holds 1 NaN"),
    ("aae_discriminator", edit("adversary.net.0.weight", lambda t: t / 0), "adversary.net.0"),
    ("local_global", edit("mala_scales", set_at(0, 0.0)), "mala_scales has 1 value not above 0"),
    ("local_global", edit("proposal.weights", lambda t: t * 2), "proposal.weights sum to 2"),
    ("local_global", edit("mala_axes", lambda t: t[:1]), "mala_axes has shape (1, 2)"),
]


@pytest.fixture(scope="module")
def fitted_states() -> dict[str, tuple[Sampler, dict[str, torch.Tensor]]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    states = {}
    for name, (make, kind) in SAMPLERS.items():
        sampler = make()
        sampler.fit(context_for(kind))
        states[name] = (make, {k: v.clone() for k, v in sampler.state_dict().items()})
    torch.set_num_threads(threads)
    return states


def test_every_built_in_sampler_finds_no_problem_in_what_it_fitted(fitted_states):
    assert set(fitted_states) == set(SAMPLERS)
    for name, (make, state) in fitted_states.items():
        assert make().check_state(state) == [], name  # a new sampler checks a saved state
        loaded = make()
        loaded.load_state_dict(state)
        assert loaded.check_state(loaded.state_dict()) == [], name
    assert PriorSampler().check_state({}) == []
    # Without validation encodings the posterior mixture's log-likelihood is NaN: not a problem.
    fixed = PosteriorMixture(scale=0.5)
    fixed.fit(quiet({"train": blobs(40)}))
    assert math.isnan(fixed.valid_loglik[0]) and fixed.check_state(fixed.state_dict()) == []


@pytest.mark.parametrize(
    ("name", "broken", "problem"), BREAKS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BREAKS)]
)
def test_every_built_in_sampler_names_what_is_wrong_with_a_broken_state(
    fitted_states, name, broken, problem
):
    make, state = fitted_states[name]
    problems = make().check_state(broken(state))
    assert any(problem in p for p in problems), problems
    assert len(problems) == len(set(problems))  # a proposal's finite check is not said twice


class PlainGaussian(Sampler):
    """A third party's sampler that does not override check_state."""

    fits = True

    def __init__(self, spread: float = 1.0):
        self.spread = spread
        self.mean = self.std = None

    def fit(self, context):
        super().fit(context)
        z = context.encodings("train")
        self.mean, self.std = z.mean(0), self.spread * z.std(0)

    def sample(self, n, generator=None):
        return self.mean + self.std * torch.randn(n, *self.mean.shape, generator=generator)

    def state_dict(self):
        return {} if self.mean is None else {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state):
        if set(state) != {"mean", "std"}:
            raise SamplerError(f"a plain_gaussian state holds mean and std, not {sorted(state)}")
        self.mean, self.std = state["mean"], state["std"]
        self.latent_shape = tuple(self.mean.shape)


def test_a_sampler_that_does_not_override_the_check_gets_the_finite_check():
    sampler = PlainGaussian()
    sampler.fit(quiet({"train": blobs(50)}))
    state = sampler.state_dict()
    assert sampler.check_state(state) == []
    nan = torch.tensor([math.nan, math.inf])
    assert sampler.check_state({**state, "std": nan}) == ["std holds 2 NaN or infinite values"]
    # Integer tensors (shapes, indices) are not checked.
    assert sampler.check_state({**state, "latent_shape": torch.tensor([2])}) == []


# ----------------------------------------------------------------------------------------------
# Attacks on a saved state, through the CLI


@pytest.fixture(scope="module")
def fitted_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run whose samples start from a 2-component ex_post_gmm it fitted."""
    _, run, _ = tiny_run
    copy = tmp_path_factory.mktemp("fitted") / "run"
    shutil.copytree(run, copy)
    done = cli("sample", str(copy), "--overwrite", *GMM)
    assert done.returncode == 0, done.stderr
    assert "sampler 'ex_post_gmm': fitted in" in done.stdout
    return copy


def copy_of(fitted_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``fitted_run`` and its fitted folder; a file of the user's in ``fitted/``."""
    copy = tmp_path / "run"
    shutil.copytree(fitted_run, copy)
    [folder] = (copy / "fitted").iterdir()
    (copy / "fitted" / "my-notes.txt").write_text("mine")
    return copy, folder


def first_draws(run: Path) -> torch.Tensor:
    return load_file(str(run / "samples" / "samples.safetensors"))["z/step-000"]


def tensors(change):
    """An attack that rewrites the tensors of the state file (its checksum left as it was)."""

    def attack(folder: Path) -> None:
        state = load_file(str(folder / "state.safetensors"))
        save_file(change(state), str(folder / "state.safetensors"))

    return attack


def forged(change):
    """An attack that rewrites the tensors and the checksum beside them to match."""

    def attack(folder: Path) -> None:
        tensors(change)(folder)
        settings = json.loads((folder / "settings.json").read_text())
        settings[STATE_CHECKSUM] = state_digest(load_file(str(folder / "state.safetensors")))
        (folder / "settings.json").write_text(json.dumps(settings))

    return attack


def rewrite(name: str, content):
    def attack(folder: Path) -> None:
        path = folder / name
        path.write_bytes(content(path.read_bytes()))

    return attack


def without_checksum(folder: Path) -> None:
    settings = json.loads((folder / "settings.json").read_text())
    del settings[STATE_CHECKSUM]
    (folder / "settings.json").write_text(json.dumps(settings))


def times(name: str, factor: float):
    return lambda state: {**state, name: state[name] * factor}


def nan_means(state):
    means = state["means"].clone()
    means[0, 0] = math.nan
    return {**state, "means": means}


CHANGED = "it does not match the checksum in settings.json: it was changed after it was fitted"
ATTACKS = {
    # The tester's three, and the variants a tester would try next.
    "scale_tril_times_1e6": (tensors(times("scale_tril", 1e6)), CHANGED),
    "negative_weights": (tensors(times("weights", -1.0)), CHANGED),
    "negated_scale_tril": (tensors(times("scale_tril", -1.0)), CHANGED),
    "nan_means": (tensors(nan_means), CHANGED),
    "truncated_file": (rewrite("state.safetensors", lambda b: b[: len(b) // 2]), "cannot be read"),
    "garbage_file": (rewrite("state.safetensors", lambda b: b"\x89garbage" * 40), "cannot be read"),
    "empty_file": (rewrite("state.safetensors", lambda b: b""), "cannot be read"),
    "checksum_removed": (without_checksum, "the settings.json beside it records no checksum"),
    "settings_not_json": (
        rewrite("settings.json", lambda b: b[:-9]),
        "the settings.json beside it cannot be read: Expecting",
    ),
    "settings_missing": (
        lambda folder: (folder / "settings.json").unlink(),
        "the settings.json beside it cannot be read: [Errno 2] No such file",
    ),
    "forged_negative_weights": (
        forged(times("weights", -1.0)),
        "weights has values not above 0; weights sum to -1, not 1",
    ),
    "forged_negated_scale_tril": (
        forged(times("scale_tril", -1.0)),
        "scale_tril have diagonal values not above 0",
    ),
    "forged_nan_means": (forged(nan_means), "means holds 1 NaN or infinite value"),
    "forged_missing_tensor": (
        forged(lambda state: {k: v for k, v in state.items() if k != "weights"}),
        "the saved state of 'ex_post_gmm' lacks 'weights'",
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_changed_or_damaged_fitted_state_is_fitted_again_with_one_line_naming_it(
    attack, fitted_run, tmp_path
):
    copy, folder = copy_of(fitted_run, tmp_path)
    change, reason = ATTACKS[attack]
    state_file = folder / "state.safetensors"
    original = state_file.read_bytes()
    draws = first_draws(copy)
    change(folder)

    done = cli("sample", str(copy), "--overwrite", *GMM)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    [line] = [line for line in done.stdout.splitlines() if "cannot be used" in line]
    named = f"sampler 'ex_post_gmm': the fitted state {str(state_file)!r} cannot be used ("
    assert line.startswith(named) and line.endswith("); refitting"), line
    assert reason in line, line
    assert "loaded what it fitted" not in done.stdout
    assert "sampler 'ex_post_gmm': fitted in" in done.stdout
    # The fit again replaced that folder alone: the state is what was fitted, the draws too.
    assert state_file.read_bytes() == original
    settings = json.loads((folder / "settings.json").read_text())
    assert settings[STATE_CHECKSUM] == state_digest(load_file(str(state_file)))
    assert sorted(p.name for p in (copy / "fitted").iterdir()) == [folder.name, "my-notes.txt"]
    assert (copy / "fitted" / "my-notes.txt").read_text() == "mine"
    assert torch.equal(first_draws(copy), draws)
    assert torch.isfinite(first_draws(copy)).all()


def test_a_state_fitted_again_is_then_loaded(fitted_run, tmp_path):
    copy, folder = copy_of(fitted_run, tmp_path)
    tensors(times("scale_tril", 1e6))(folder)
    assert cli("sample", str(copy), "--overwrite", *GMM).returncode == 0
    again = cli("sample", str(copy), "--overwrite", *GMM)
    assert again.returncode == 0, again.stderr
    assert "loaded what it fitted" in again.stdout and "cannot be used" not in again.stdout


def garbage_fit(kind: str):
    """``fit_mixture`` that gives a mixture with ``kind`` of problem."""
    from aesampler.samplers import gmm

    real = gmm.fit_mixture

    def fit(*args, **kwargs):
        weights, means, tril = real(*args, **kwargs)
        if kind == "nan":
            means = means.clone()
            means[0, 0] = math.nan
            return weights, means, tril
        return -weights, means, tril

    return fit


@pytest.mark.parametrize(
    ("kind", "problem"),
    [("nan", "means holds 1 NaN or infinite value"), ("negative", "weights has values not above")],
)
def test_a_fit_that_gives_a_broken_state_is_refused_and_nothing_is_saved(
    kind, problem, fitted_run, tmp_path, monkeypatch
):
    from aesampler.samplers import gmm

    copy, folder = copy_of(fitted_run, tmp_path)
    monkeypatch.setattr(gmm, "fit_mixture", garbage_fit(kind))
    samples = (copy / "samples" / "samples.safetensors").read_bytes()

    # A new setting: nothing saved for it before, nothing saved after.
    done = cli("sample", str(copy), "--overwrite", *GMM[:1], "sampling.start.components=3")
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    [message] = done.stderr.splitlines()
    assert message.startswith(
        "aesampler: error: sampler 'ex_post_gmm' fitted a state that cannot be used ("
    )
    assert problem in message and "nothing was saved" in message, message
    assert sorted(p.name for p in (copy / "fitted").iterdir()) == [folder.name, "my-notes.txt"]
    assert (copy / "samples" / "samples.safetensors").read_bytes() == samples

    # A changed state whose fit again is broken: one line says it is refitted, one refuses.
    tensors(times("scale_tril", 1e6))(folder)
    changed = (folder / "state.safetensors").read_bytes()
    done = cli("sample", str(copy), "--overwrite", *GMM)
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert len([line for line in done.stdout.splitlines() if "cannot be used" in line]) == 1
    assert len(done.stderr.splitlines()) == 1 and problem in done.stderr
    assert (folder / "state.safetensors").read_bytes() == changed  # left for the next attempt
    assert (copy / "samples" / "samples.safetensors").read_bytes() == samples


# ----------------------------------------------------------------------------------------------
# A third party's sampler: the checksum and the finite check without any code of its own


class PlainPlugin:
    @aesampler.hookimpl
    def register_samplers(self, register):
        register("plain_gaussian", PlainGaussian)


def test_a_plugin_samplers_state_gets_the_checksum_and_the_finite_check(
    fitted_run, tmp_path, monkeypatch
):
    from aesampler.plugins import load_registry
    from aesampler.recipe import load_recipe
    from aesampler.workflow import WorkflowError, build_components, fit_sampler

    copy, _ = copy_of(fitted_run, tmp_path)
    registry = load_registry(extra_plugins=[("plain", PlainPlugin())])
    overrides = [f"output.dir={copy}", "sampling.start.name=plain_gaussian"]
    recipe = load_recipe(copy / "recipe.yaml", overrides, registry=registry)

    def start(lines: list[str]) -> Sampler:
        parts = build_components(recipe, registry=registry)
        return fit_sampler(parts, parts.start_spec, lines.append)

    lines: list[str] = []
    first = start(lines)
    [folder] = [p for p in (copy / "fitted").iterdir() if p.name.startswith("plain_gaussian-")]
    state_file = folder / "state.safetensors"
    assert json.loads((folder / "settings.json").read_text())[STATE_CHECKSUM] == state_digest(
        first.state_dict()
    )

    tensors(times("std", 1e6))(folder)  # finite, so only the checksum can tell
    lines = []
    again = start(lines)
    assert [line for line in lines if "cannot be used" in line] == [
        f"sampler 'plain_gaussian': the fitted state {str(state_file)!r} cannot be used ({CHANGED}"
        "); refitting"
    ]
    assert torch.equal(again.std, first.std)

    forged(lambda state: {**state, "std": state["std"] / 0})(folder)
    lines = []
    start(lines)
    assert any("std holds 4 NaN or infinite values); refitting" in line for line in lines), lines

    # A fit that gives NaN is refused, whatever the sampler (another setting: a fit of its own).
    real_fit = PlainGaussian.fit

    def nan_fit(self, context):
        real_fit(self, context)
        self.std = self.std / 0

    monkeypatch.setattr(PlainGaussian, "fit", nan_fit)
    other = load_recipe(copy / "recipe.yaml", [*overrides, "sampling.start.spread=2.0"], registry)
    parts = build_components(other, registry=registry)
    with pytest.raises(WorkflowError, match=r"std holds 4 NaN or infinite values\); nothing"):
        fit_sampler(parts, parts.start_spec, lambda line: None)


def test_a_check_that_raises_is_a_problem_not_a_crash():
    from aesampler.components import _state_problems

    class Fragile(PlainGaussian):
        def check_state(self, state):
            return [f"std is {state['std'].item()}"]  # fails on a state of several values

    assert _state_problems(Fragile(), {"std": torch.ones(3), "mean": torch.zeros(3)}) == [
        "its check failed (RuntimeError: a Tensor with 3 elements cannot be converted to Scalar)"
    ]
    assert _state_problems(Fragile(), {"std": torch.ones(1)}) == ["std is 1.0"]
