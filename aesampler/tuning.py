"""Choose how to sample a trained model, on held-out data (``sampling.start: auto``).

The paper samples every model one way: prior draws, batch normalisation with minibatch
statistics, the training corruption inside the chain. Measured on the quickstart DAAE, that is
the right configuration for prior draws and the wrong one for every fitted sampler
(docs/concepts.md). ``aesampler tune RECIPE``, and ``sampling.start: auto`` in ``sample``,
``evaluate`` and ``run``, search instead:

* **the grid**: every start sampler of ``tune.samplers`` in every batch-norm mode of
  ``tune.batchnorm`` and every chain corruption of ``tune.corruption`` (an entry that sets
  ``batchnorm`` or ``corruption`` is searched in that setting only), each followed by 0, 1, ...,
  K chain steps, K = ``sampling.steps`` (``sampling.max_steps`` with ``steps: auto``). The
  paper's configuration (``prior``, batch BN, the training corruption) is always in it;
* **the score**: the Fréchet distance of a configuration's samples at step t to the validation
  images, in the features of ``evaluate.feature_extractor``. The test split is not read until
  the choice is fixed;
* **the budget**: successive halving. Round r runs ``tune.num_chains[r]`` chains of each
  configuration still in the race (every configuration with the same seed, so that they differ
  by their setting, not their noise) and passes the best ``tune.keep`` of them, by their best
  step, to the next round; the paper's configuration always goes on, as the baseline of the
  last round;
* **copying**: a step is flagged, and never chosen, when the ``data_copying`` metric (Meehan et
  al.'s C_T against the validation images) is below :data:`COPYING_THRESHOLD`, or when its
  novelty (RMS distance to the nearest training image) is below the yardstick's: validation
  images encoded and decoded in the same batch-norm mode. Decoded images are smoother than real
  ones, so real held-out images are not a reachable bar; reconstructions are;
* **the choice**: the unflagged configuration and step of the last round with the lowest
  Fréchet distance. Then, for the report, the chosen and the paper's configurations are
  measured on the test split with the ``evaluate`` section's chains and metrics.

Files, in the run directory's ``tuning/`` (replaced as one)::

    tuning.json      the key, the grid round by round, the yardstick, the choice, the test scores
    tuning.png       the validation Fréchet distance of the last round's configurations by step
    chosen.png       test chains of the chosen configuration at its steps
    paper.png        the same for the paper's configuration

A later ``sample`` or ``evaluate`` with ``sampling.start: auto`` reads the choice from
``tuning.json`` when its key (the model's weights, the tune, sampling and evaluate settings,
the data and the version) matches, and searches again otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed
from .comparison import COPYING, entry_name, labels
from .components import TunedStart, TuningError, fit_sampler
from .documents import Tuning
from .errors import quoted
from .evaluation.copying import COPYING_THRESHOLD
from .recipe.schema import ComponentSpec, SamplerSpec
from .rundir import (
    CHOSEN_FIGURE,
    PAPER_FIGURE,
    TUNING,
    TUNING_FIGURE,
    TUNING_FILE,
    RunDir,
    read_json,
    with_recipe,
    write_json,
    write_recipe,
)
from .samplers import Sampler, encode_images
from .version import __version__

FORMAT = "aesampler-tuning"
#: The score: a metric every configuration is measured with (lower is better).
SCORE = "frechet"
#: The configuration the paper samples with.
PAPER = SamplerSpec(name="prior", batchnorm="batch", corruption="training")


@dataclass
class Candidate:
    """One configuration of the grid and what each round measured of it."""

    label: str
    spec: SamplerSpec
    paper: bool
    rounds: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        return self.rounds[-1]

    def best(self) -> tuple[int, float]:
        """The step with the lowest score of the last round that is not flagged, and its score
        (step -1 and infinity when every step is flagged or undefined)."""
        scores = {
            int(t): v
            for t, v in self.last[SCORE].items()
            if math.isfinite(v) and not self.last["copying_flag"].get(t, False)
        }
        if not scores:
            return -1, math.inf
        step = min(scores, key=scores.get)
        return step, scores[step]

    def best_flagged_or_not(self) -> tuple[int, float]:
        """The step with the lowest score of the last round, flagged or not."""
        scores = {int(t): v for t, v in self.last[SCORE].items() if math.isfinite(v)}
        if not scores:
            return 0, math.nan
        step = min(scores, key=scores.get)
        return step, scores[step]


def grid(recipe) -> list[Candidate]:
    """Every configuration the search tries: samplers × batch-norm modes × corruptions, and
    the paper's configuration whatever the tune section says."""
    tune = recipe.tune
    # Without a chain corruption, "none" and "training" are the same chain: one is enough.
    corrupting = recipe.chain_corruption is not None
    specs: list[SamplerSpec] = []
    seen: set[str] = set()
    for entry in tune.samplers:
        for batchnorm in [entry.batchnorm] if entry.batchnorm else tune.batchnorm:
            for corruption in [entry.corruption] if entry.corruption else tune.corruption:
                corruption = corruption if corrupting else "training"
                spec = SamplerSpec(
                    **{**entry.model_dump(), "batchnorm": batchnorm, "corruption": corruption}
                )
                identity = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
                if identity not in seen:
                    seen.add(identity)
                    specs.append(spec)
    paper = json.dumps(PAPER.model_dump(mode="json"), sort_keys=True)
    if paper not in seen:
        specs.append(PAPER)
    names = labels([entry_name(spec) for spec in specs])
    return [
        Candidate(name, spec, json.dumps(spec.model_dump(mode="json"), sort_keys=True) == paper)
        for name, spec in zip(names, specs)
    ]


def tuning_key(parts) -> str:
    """A hash of everything that decides the search's outcome."""
    recipe = parts.recipe
    identity = {
        "weights": parts.weights_digest(),
        "tune": recipe.tune.model_dump(mode="json"),
        "sampling": recipe.sampling.model_dump(
            mode="json", exclude={"grid_size", "num_chains", "shard_size", "record", "start"}
        ),
        "corruption": recipe.chain_corruption.model_dump(mode="json")
        if recipe.chain_corruption
        else None,
        "evaluate": recipe.evaluate.model_dump(mode="json"),
        "data": recipe.data.model_dump(mode="json"),
        "device": str(parts.device),
        "aesampler": __version__,
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _flags(measured: dict) -> tuple[dict[str, float], dict[str, bool]]:
    """C_T by step and whether each step is flagged as copying (no test: nothing flagged)."""
    cells = measured["metrics"].get(COPYING, {})
    values = {t: c["value"] for t, c in cells.items()}
    return values, {t: math.isfinite(v) and v < COPYING_THRESHOLD for t, v in values.items()}


def _summary(measured: dict, chains: int, seed: int, floor: float | None = None) -> dict:
    """A round's numbers for one configuration. A step is flagged as copying when its C_T is
    below the threshold, or its novelty below ``floor`` (the yardstick's: validation images
    encoded and decoded are as close to the training images as a decoder's output need be)."""
    copying, flags = _flags(measured)
    novelty = {t: c["value"] for t, c in measured["metrics"].get("novelty", {}).items()}
    if floor is not None:
        for t, v in novelty.items():
            flags[t] = flags.get(t, False) or (math.isfinite(v) and v < floor)
    return {
        "chains": chains,
        "seed": seed,
        SCORE: {t: c["value"] for t, c in measured["metrics"].get(SCORE, {}).items()},
        "novelty": novelty,
        "novelty_floor": floor,
        "copying": copying,
        "copying_flag": flags,
    }


def _copying_test(parts) -> bool:
    return COPYING in parts.registry.names("metric")


def _metrics(parts, specs: list | None = None) -> list:
    """The search's metrics (the score, novelty), or the metric sections ``specs``, and the
    copying test where it is registered."""
    specs = (
        list(specs)
        if specs is not None
        else [ComponentSpec(name=SCORE), ComponentSpec(name="novelty")]
    )
    names = [spec.name for spec in specs]
    if _copying_test(parts) and COPYING not in names:
        specs.append(ComponentSpec(name=COPYING))
    return [
        (spec.name, parts.registry.create("metric", spec.name, **spec.params)) for spec in specs
    ]


@dataclass
class _Fits:
    """The samplers the search fitted, by setting, and the seconds fitting them took."""

    parts: object
    log: Callable[[str], None]
    fitted: dict[str, Sampler] = field(default_factory=dict)
    seconds: float = 0.0

    def sampler_for(self, spec: SamplerSpec) -> Sampler:
        # The corruption acts after the draws: one fitted sampler serves both corruptions.
        key = json.dumps(spec.model_dump(mode="json", exclude={"corruption"}), sort_keys=True)
        if key not in self.fitted:
            details: dict = {}
            self.fitted[key] = fit_sampler(self.parts, spec, self.log, details)
            self.seconds += details["fit_seconds"]
        return self.fitted[key]


@dataclass
class _Search:
    """The search on the validation split: the grid, the yardstick, the rounds, their cost."""

    evaluator: object
    fits: _Fits
    candidates: list[Candidate]
    yardstick: dict = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)
    chain_steps: int = 0


@dataclass
class _Choice:
    """The configuration chosen and the paper's, each with its step and validation score."""

    chosen: Candidate
    step: int
    score: float
    paper: Candidate
    paper_step: int
    paper_score: float


def tune(
    parts,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Search the grid, choose, measure the choice and the paper's configuration on the test
    split, and write ``tuning/``. Returns what ``tuning/tuning.json`` holds; sets
    ``parts.tuned``."""
    recipe = parts.recipe
    run = RunDir(run_dir)
    run.check_replaceable("tune", [TUNING], overwrite)
    candidates = grid(recipe)
    started = time.perf_counter()
    search = _start_search(parts, run, candidates, log)
    _yardstick(parts, search)
    alive = _run_rounds(parts, search, log)
    choice = _choose(alive, log)
    searched = time.perf_counter() - started
    tuned = TunedStart(choice.chosen.spec, choice.step, choice.chosen.label)
    log(
        f"tune: chose {choice.chosen.label} at step {choice.step} ({SCORE} {choice.score:.4g} "
        f"on validation; the paper's configuration: {choice.paper_score:.4g} at step "
        f"{choice.paper_step})"
    )

    # Only now, with the choice fixed, the test split: chosen and paper's, the evaluate setup.
    test_started = time.perf_counter()
    tester, test, pictures = _test(parts, run, search, choice, progress, log)
    tested = time.perf_counter() - test_started
    cost = {
        "search_seconds": searched,
        "fit_seconds": search.fits.seconds,
        "test_seconds": tested,
        "chain_steps": search.chain_steps,
    }
    document = _document(parts, search, choice, tuned, tester, test, cost)
    with run.transaction("tune", with_recipe(run, TUNING)) as txn:
        _write(txn, document, pictures, choice)
        write_recipe(recipe, txn)
    run.record_components(
        parts.registry.provenance(
            [("sampler", c.spec.name) for c in search.candidates]
            + [("metric", name) for name, _ in tester.metrics]
        )
    )
    parts.tuned = tuned
    return document


def _start_search(
    parts, run: RunDir, candidates: list[Candidate], log: Callable[[str], None]
) -> _Search:
    """The grid, announced, and the evaluator that scores it against the validation images."""
    from .evaluation.evaluate import Evaluator

    cfg = parts.recipe.tune
    last_step = parts.recipe.sampling.most_steps
    log(
        f"tune: {len(candidates)} configurations × steps 0..{last_step}, scored by {SCORE} "
        f"against {cfg.reference_size} validation images; rounds of {cfg.num_chains} chains"
    )
    evaluator = Evaluator(
        parts,
        run.path,
        log=log,
        reference_split="valid",
        reference_size=cfg.reference_size,
        metrics=_metrics(parts),
    )
    return _Search(evaluator, _Fits(parts, log), candidates)


def _yardstick(parts, search: _Search) -> None:
    """The yardstick, first: no configuration may be closer to the training images than
    validation images encoded and decoded are, in each batch-norm mode searched."""
    evaluator = search.evaluator
    for mode in sorted({c.spec.batchnorm for c in search.candidates}):
        z = encode_images(
            parts.model,
            evaluator.reference,
            batchnorm=mode,
            seed=parts.recipe.tune.seed,
            device=parts.device,
        )
        x = parts.chain.run(
            z, steps=0, batchnorm=mode, out_device="cpu", precision=parts.precision.precision
        ).x[0]
        measured = evaluator.measure({0: x}, {}, progress=False, batchnorm=mode, bootstrap=0)
        summary = _summary(measured, len(x), 0)
        search.yardstick[mode] = {
            k: summary[k]["0"] for k in (SCORE, "novelty", "copying") if "0" in summary[k]
        }


def _run_rounds(parts, search: _Search, log: Callable[[str], None]) -> list[Candidate]:
    """Successive halving: every round measures the configurations still in the race and
    passes the best of them (and the paper's) on. Returns the last round's configurations."""
    cfg = parts.recipe.tune
    alive = search.candidates
    for r, chains in enumerate(cfg.num_chains):
        final = r == len(cfg.num_chains) - 1
        seed = cfg.seed + r
        for c in alive:
            _measure_round(parts, search, c, chains, seed)
            step, score = c.best()
            log(f"tune round {r + 1}: {c.label}: best {SCORE} {score:.4g} at step {step}")
        search.rounds.append(
            {"chains": chains, "seed": seed, "configurations": [c.label for c in alive]}
        )
        if not final:
            ranked = sorted(alive, key=lambda c: c.best()[1])
            kept = ranked[: max(1, math.ceil(cfg.keep * len(alive)))]
            kept += [c for c in alive if c.paper and c not in kept]
            alive = kept
    return alive


def _measure_round(parts, search: _Search, c: Candidate, chains: int, seed: int) -> None:
    """One round of one configuration: ``chains`` chains from ``seed``, scored at every step."""
    last_step = parts.recipe.sampling.most_steps
    steps = list(range(last_step + 1))
    setting = parts.setting(c.spec)
    result, _ = search.evaluator.run_chains(
        search.fits.sampler_for(c.spec),
        steps,
        progress=False,
        setting=setting,
        num_chains=chains,
        seed=seed,
    )
    measured = search.evaluator.measure(
        {t: result.x[t] for t in steps},
        {},
        progress=False,
        batchnorm=setting[0],
        bootstrap=0,
    )
    floor = search.yardstick[c.spec.batchnorm].get("novelty")
    c.rounds.append(_summary(measured, chains, seed, floor))
    search.chain_steps += chains * last_step


def _choose(alive: list[Candidate], log: Callable[[str], None]) -> _Choice:
    """The unflagged configuration and step of the last round with the lowest score."""
    choice = min(alive, key=lambda c: c.best()[1])
    step, score = choice.best()
    paper = next(c for c in alive if c.paper)
    if step < 0:  # every step of every configuration copies: fall back on the paper's
        choice = paper
        step, score = paper.best_flagged_or_not()
        log("tune: every configuration was flagged as copying; keeping the paper's")
    paper_step, paper_score = paper.best()
    if paper_step < 0:
        paper_step, paper_score = paper.best_flagged_or_not()
    return _Choice(choice, step, score, paper, paper_step, paper_score)


def _test(
    parts, run: RunDir, search: _Search, choice: _Choice, progress: bool, log
) -> tuple[object, dict, dict]:
    """The chosen and the paper's configurations measured on the test split with the evaluate
    section's chains and metrics: the evaluator, the measures by name, the pictures by name."""
    from .evaluation.evaluate import Evaluator

    recipe = parts.recipe
    ev = recipe.evaluate
    last_step = recipe.sampling.most_steps
    steps = list(range(last_step + 1))
    tester = Evaluator(parts, run.path, log=log, metrics=_metrics(parts, ev.metrics))
    test = {}
    pictures = {}
    shown_steps = sorted({0, 1, choice.step, choice.paper_step, last_step} & set(steps))
    for name, c, at in (
        ("chosen", choice.chosen, choice.step),
        ("paper", choice.paper, choice.paper_step),
    ):
        setting = parts.setting(c.spec)
        result, latents = tester.run_chains(
            search.fits.sampler_for(c.spec), steps, progress=progress, setting=setting
        )
        search.chain_steps += ev.num_chains * last_step
        measured = tester.measure(
            {t: result.x[t] for t in steps}, latents, progress=progress, batchnorm=setting[0]
        )
        test[name] = {"label": c.label, "step": at, **measured}
        shown = min(recipe.samplers.grid_size, ev.num_chains)
        pictures[name] = {t: result.x[t][:shown] for t in shown_steps}
    _warn_if_worse(test, choice, log)
    return tester, test, pictures


def _warn_if_worse(test: dict, choice: _Choice, log: Callable[[str], None]) -> None:
    """Say so when the choice scores worse than the paper's configuration on the test split."""
    chosen_test = test["chosen"]["metrics"].get(SCORE, {}).get(str(choice.step), {}).get("value")
    paper_test = (
        test["paper"]["metrics"].get(SCORE, {}).get(str(choice.paper_step), {}).get("value")
    )
    if chosen_test is not None and paper_test is not None and chosen_test > paper_test:
        log(
            f"tune: WARNING: on the test split the choice scores {chosen_test:.4g}, worse than "
            f"the paper's configuration ({paper_test:.4g}); the search is at fault"
        )


def _document(
    parts, search: _Search, choice: _Choice, tuned: TunedStart, tester, test: dict, cost: dict
) -> dict:
    """What ``tuning/tuning.json`` holds."""
    cfg, ev = parts.recipe.tune, parts.recipe.evaluate
    return {
        "format": FORMAT,
        "key": tuning_key(parts),
        "settings": {
            **cfg.model_dump(mode="json"),
            "max_steps": parts.recipe.sampling.most_steps,
            "score": SCORE,
            "copying_threshold": COPYING_THRESHOLD,
            "copying_test": _copying_test(parts),
            "checkpoint": str(parts.checkpoint),
        },
        "feature_extractor": search.evaluator.extractor_info,
        "candidates": [
            {
                "label": c.label,
                "start": c.spec.model_dump(mode="json"),
                "paper": c.paper,
                "rounds": c.rounds,
            }
            for c in search.candidates
        ],
        "rounds": search.rounds,
        "yardstick": search.yardstick,
        "choice": {**tuned.as_dict(), SCORE: choice.score},
        "paper": {
            "label": choice.paper.label,
            "steps": choice.paper_step,
            SCORE: choice.paper_score,
        },
        "test": {
            "split": ev.reference_split,
            "num_chains": ev.num_chains,
            "reference": tester.reference_info(test["chosen"]),
            **test,
        },
        "cost": cost,
    }


def _write(txn, document: dict, pictures: dict, choice: _Choice) -> None:
    """``tuning/``'s files, in the transaction: the record and its figures."""
    from .figures import steps_figure, tuning_figure

    folder = txn.path(TUNING)
    folder.mkdir()
    write_json(folder / TUNING_FILE, Tuning.build(document))
    tuning_figure(document, folder / TUNING_FIGURE)
    steps_figure(pictures["chosen"], folder / CHOSEN_FIGURE, choice.chosen.label)
    steps_figure(pictures["paper"], folder / PAPER_FIGURE, choice.paper.label)


def read_choice(run_dir: str | Path, key: str | None = None) -> TunedStart | None:
    """The choice recorded in ``tuning/tuning.json``; None when there is none, or (with
    ``key``) when it was made for another model or other settings."""
    file = RunDir(run_dir) / TUNING / TUNING_FILE
    if not file.is_file():
        return None
    document = read_json(file, "the search's record")
    where = quoted(file)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise TuningError(
            f"{where} is not a record aesampler tune wrote; run aesampler tune --overwrite"
        )
    if key is not None and document.get("key") != key:
        return None
    return TunedStart.from_dict(document.get("choice"), where)


def resolve_start(
    parts, *, overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> TunedStart:
    """The configuration ``sampling.start: auto`` samples with: the one ``tuning/`` records
    for this model and these settings, else a new search (rank 0's under torchrun)."""
    if parts.tuned is not None:
        return parts.tuned
    run_dir = parts.recipe.output.dir

    def find_or_search() -> dict:
        found = read_choice(run_dir, tuning_key(parts))
        if found is not None:
            log(f"sampling.start: auto: using {found.label} at step {found.steps} (tuning/)")
            return found.as_dict()
        if (RunDir(run_dir) / TUNING / TUNING_FILE).is_file() and not overwrite:
            raise TuningError(
                f"{quoted(Path(run_dir) / TUNING)} holds a search for another model or other "
                "settings; run "
                "aesampler tune --overwrite (or this command with --overwrite) to search again"
            )
        return tune(parts, run_dir, overwrite=overwrite, progress=progress, log=log)["choice"]

    choice = distributed.broadcast_object(distributed.main_first(find_or_search))
    parts.tuned = TunedStart.from_dict(choice, "the search's choice")
    return parts.tuned


def format_tuning(document: dict) -> str:
    """The search as a plain-text table: the last round's scores by configuration and step."""
    settings = document["settings"]
    steps = list(range(settings["max_steps"] + 1))
    last = [c for c in document["candidates"] if len(c["rounds"]) == len(document["rounds"])]
    header = ["configuration", *[f"step {t}" for t in steps]]
    rows = []
    for c in sorted(last, key=lambda c: min(c["rounds"][-1][SCORE].values())):
        r = c["rounds"][-1]
        cells = [c["label"] + (" (paper)" if c["paper"] else "")]
        for t in steps:
            value = r[SCORE].get(str(t))
            flag = "!" if r["copying_flag"].get(str(t)) else ""
            cells.append("-" if value is None else f"{value:.4g}{flag}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    choice, paper = document["choice"], document["paper"]
    test = document["test"]

    def on_test(name: str, step: int) -> str:
        cell = test[name]["metrics"].get(SCORE, {}).get(str(step))
        return (
            "-" if cell is None else f"{cell['value']:.4g} [{cell['low']:.3g}, {cell['high']:.3g}]"
        )

    return "\n".join(
        [
            f"{SCORE} on the validation split, last round ({document['rounds'][-1]['chains']} "
            f"chains; ! = copying: C_T < {settings['copying_threshold']:g} or novelty below "
            "the yardstick's):",
            *text,
            f"chosen: {choice['label']} at step {choice['steps']}; on the {test['split']} split "
            f"{on_test('chosen', choice['steps'])}, the paper's configuration "
            f"({paper['label']} at step {paper['steps']}) {on_test('paper', paper['steps'])}",
        ]
    )
