"""The one shape every command's work takes: a :class:`Stage`, run with a :class:`StageContext`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..components import Components
from ..recipe import Recipe
from ..registry import Registry
from ..rundir import OUTPUTS, RunDir


@dataclass
class StageContext:
    """What the stages of one command share: the recipe, the run directory, the model.

    ``parts`` is None until the model is trained or loaded: only a stage's ``check`` runs
    before that. ``remake`` says whether stages replace their earlier outputs: a run that trains
    (or resumes) remakes every picture and metric; a command with a checkpoint replaces only
    with ``--overwrite``.
    """

    recipe: Recipe
    registry: Registry
    run_dir: RunDir
    command: str = "run"
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    log: Callable[[str], None] = print
    parts: Components | None = None
    remake: bool = False
    #: What each stage that ran gave back, by stage name.
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0 under torchrun; a single process always)."""
        return distributed.world().is_main

    @property
    def path(self) -> Path:
        return self.run_dir.path


def _always(recipe: Recipe) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One command's work: what it needs, what it writes, and ``run``.

    ``name`` is the command (``aesampler NAME``); ``entry`` names its outputs in
    :data:`aesampler.rundir.OUTPUTS` (the run directory says what each command writes), checked
    before the model is loaded; None for the report, which every command rewrites.
    ``enabled`` says whether ``aesampler run`` does it with this recipe; its own command does it
    whatever the recipe says when ``forced``, else only when ``enabled``. ``tuned_start``: it
    samples from ``sampling.start``, so with ``start: auto`` the tune stage runs first.
    ``every_rank``: under torchrun every process runs it (its share of the chains), not rank 0
    alone. ``test_data``: it reads the test split, checked against the model before any chain
    runs. ``check`` runs (on rank 0) before anything is trained or written, ``prepare`` once the
    model is loaded and before any stage runs: work that would fail later fails first.
    """

    name: str
    run: Callable[[StageContext], Any]
    entry: str | None = None
    enabled: Callable[[Recipe], bool] = _always
    forced: bool = True
    tuned_start: bool = False
    every_rank: bool = False
    test_data: bool = False
    check: Callable[[Recipe, Registry], None] | None = None
    prepare: Callable[[Components], None] | None = None

    @property
    def writes(self) -> tuple[str, ...]:
        """The run-directory entries it writes (and its ``--overwrite`` may replace)."""
        return OUTPUTS[self.entry] if self.entry else ()
