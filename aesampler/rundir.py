"""The run directory: its layout, its file names, atomic writes, and what aesampler wrote there.

Every file and folder aesampler writes into a run directory is named here and written through
here. A run directory holds a manifest, ``aesampler-run.json``, that lists each output aesampler
wrote (by entry name and the command that wrote it). That manifest is what makes ``--overwrite``
safe:

* ``--overwrite`` replaces only entries the manifest lists, and only those of the command that
  runs (``sample --overwrite`` replaces ``samples/`` and nothing else); any other file in the
  directory is left alone. A non-empty directory without a manifest is refused outright: aesampler
  never deletes what it cannot prove it wrote.
* Outputs are replaced in a *transaction*: new outputs are written under a staging name beside the
  old ones, the old ones are moved into a backup folder, the new ones are renamed into place, and
  only then is the backup deleted. The manifest records the transaction while it is open, so a
  process killed at any moment leaves the old result or the new one: the next command that opens
  the directory rolls an interrupted transaction back (:meth:`RunDir.recover`).
* Training is a transaction that commits when its first checkpoint is on disk: a training that
  fails or is killed before that leaves the directory as it was (a fresh run directory is
  removed again); one killed later leaves a run that ``--resume`` continues.

Layout (names are the constants below)::

    aesampler-run.json       the manifest
    recipe.yaml              the resolved recipe (train, or the first command that made the dir)
    metrics.jsonl            training losses, one line per step and per epoch      (train)
    images/                  per-epoch reconstruction and sample grids              (train)
    checkpoints/             step-NNNNNNNN/ folders and ``latest``                  (train)
    samples/                 grids, steps.png, samples.safetensors (or its shards),
                             settings.json                                          (sample)
    interpolation/           interpolation.png, .safetensors, settings.json         (interpolate)
    inpainting/              step-NNN.png, inpainting.png, .safetensors, settings.json (inpaint)
    metrics.json             sample quality at every evaluated step                 (evaluate)
    samplers/                the sampler comparison: comparison.json, comparison.png and
                             LABEL/ (samples.safetensors, steps.png, settings.json)     (samplers)
    tuning/                  the search behind sampling.start: auto: tuning.json (the
                             grid, the choice, test scores), tuning.png, chosen.png,
                             paper.png                                               (tune)
    fitted/NAME-KEY/         what a sampler fitted, by its settings and model           (fit)
    partial/samples-KEY/     the finished shards of a sampling run not yet complete   (partial)
                             and .aesampler-lock, held by its live writer
    report.html, report/     the HTML report and its plots                          (report)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import AesamplerError, quoted
from .version import __version__

MANIFEST = "aesampler-run.json"
LOCK = ".aesampler-lock"
RECIPE = "recipe.yaml"
TRAIN_LOG = "metrics.jsonl"
IMAGES = "images"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
INTERPOLATION = "interpolation"
INPAINTING = "inpainting"
METRICS = "metrics.json"
SAMPLERS = "samplers"
TUNING = "tuning"
FITTED = "fitted"
PARTIAL = "partial"
REPORT = "report.html"
REPORT_ASSETS = "report"
# Inside output folders.
SETTINGS = "settings.json"
SAMPLES_TENSORS = "samples.safetensors"  # the one file of a run of one shard
INTERPOLATION_TENSORS = "interpolation.safetensors"
INTERPOLATION_GRID = "interpolation.png"
INPAINTING_TENSORS = "inpainting.safetensors"
INPAINTING_GRID = "inpainting.png"
SAMPLER_STATE = "state.safetensors"
STEPS_FIGURE = "steps.png"
COMPARISON = "comparison.json"
COMPARISON_FIGURE = "comparison.png"
TUNING_FILE = "tuning.json"
TUNING_FIGURE = "tuning.png"
CHOSEN_FIGURE = "chosen.png"
PAPER_FIGURE = "paper.png"

#: What each command writes (and so what its ``--overwrite`` may replace).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": (RECIPE, TRAIN_LOG, IMAGES, CHECKPOINTS),
    "sample": (SAMPLES,),
    "interpolate": (INTERPOLATION,),
    "inpaint": (INPAINTING,),
    "evaluate": (METRICS,),
    "report": (REPORT, REPORT_ASSETS),
    "samplers": (SAMPLERS,),
    "tune": (TUNING,),
    # What samplers fitted (sample, evaluate, samplers and run fit them), one folder each, kept.
    "fit": (FITTED,),
    # The shards a sampling run finished, kept until the run completes so a killed run resumes.
    "partial": (PARTIAL,),
}


def samples_file(index: int, count: int) -> str:
    """The name in ``samples/`` of shard ``index`` of ``count``: ``samples.safetensors`` when
    there is one, else ``samples-00003-of-00025.safetensors``."""
    return SAMPLES_TENSORS if count == 1 else f"samples-{index:05d}-of-{count:05d}.safetensors"


def partial_shard_file(index: int) -> str:
    """The name in ``partial/samples-KEY/`` of a finished shard."""
    return f"shard-{index:05d}.safetensors"


FORMAT = "aesampler-run"
VERSION = 1
#: The largest manifest read. aesampler's are a few KB (about 100 bytes per output, open
#: transaction and component used); every command reads its manifest some 30 times, and one of
#: 750 KB already doubled the time of a small ``sample`` (measured: 5.6 s to 10.3 s).
MAX_MANIFEST = 256 * 1024
_STAGING = ".aesampler-new-"
_BACKUP = ".aesampler-old-"
_TXN_LOCK = ".aesampler-txn-"
_COMMAND = r"[a-z]+"
_BACKUP_NAME = re.compile(rf"^{re.escape(_BACKUP)}{_COMMAND}-\d+-\d+$")
_LOCK_NAME = re.compile(rf"^{re.escape(_TXN_LOCK)}{_COMMAND}-\d+-\d+\.lock$")
# How far a file written after a transaction took its lock may seem to predate the lock: none,
# since every time stamp comes from one kernel clock that only moves on (coarse file-system
# stamps are truncated alike); a wall clock stepped back mid-run makes a rollback refuse.
_CLOCK_SLACK_NS = 0


class RunDirError(AesamplerError):
    """The run directory is in the way: not aesampler's, outputs already there, unreadable."""


# ----------------------------------------------------------------------------------------------
# Atomic writes


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """An ``OSError`` raised in the block without a file name (a full disk meets a ``write``
    or an ``fsync``, which know no name) gets ``path``'s, so its message says where."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with naming(path):
        try:
            _write_file(tmp, data)
            fault_point(f"write {path.name}")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def write_json(path: Path, document: Any) -> None:
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())


def save_png(images, path: Path, nrow: int) -> None:
    """A grid of images (N, C, H, W) in [0, 1] as one PNG, written atomically."""
    from torchvision.utils import save_image  # imported only when pictures are made

    buffer = io.BytesIO()
    save_image(images.float().clamp(0, 1), buffer, format="png", nrow=nrow, padding=2)
    atomic_write_bytes(path, buffer.getvalue())


def save_tensors(tensors, path: Path) -> None:
    """Tensors (a dict of names to tensors) as one safetensors file, written atomically."""
    from safetensors.torch import save  # torch is imported only when tensors are saved

    atomic_write_bytes(path, save(tensors))


def save_settings(folder: Path, document: dict[str, Any]) -> None:
    """An output folder's ``settings.json`` (what produced its pictures, see
    :func:`aesampler.components.settings_document`), and the components it names in the
    manifest of the run directory that holds the folder."""
    write_json(folder / SETTINGS, document)
    RunDir(folder.parent).record_components(document["components"])


def with_recipe(run: RunDir, entry: str) -> list[str]:
    """The entries a command writes: its own, and the recipe when the directory has none yet."""
    return [entry] if (run / RECIPE).exists() else [entry, RECIPE]


def write_recipe(recipe, txn: Transaction) -> None:
    """The resolved recipe (a :class:`aesampler.recipe.Recipe`) into ``txn`` when the
    transaction writes it (see :func:`with_recipe`)."""
    if RECIPE in txn.entries:
        recipe_text = yaml.safe_dump(recipe.resolved(), sort_keys=False)
        atomic_write_bytes(txn.path(RECIPE), recipe_text.encode())


@contextlib.contextmanager
def recording_commits(into: list[Path] | None = None) -> Iterator[list[Path]]:
    """Collect (in ``into``) the outputs that transactions commit while the block runs: the CLI
    names them when a later step fails, since they were replaced and stay so."""
    global _committed
    outer, _committed = _committed, ([] if into is None else into)
    try:
        yield _committed
    finally:
        _committed = outer


_committed: list[Path] | None = None
# Commands whose outputs are aesampler's own bookkeeping, not results a user asked for.
_BOOKKEEPING = frozenset({"fit", "partial"})


# ----------------------------------------------------------------------------------------------
# Fault injection, for the tests that kill a writer at every point where it changes the disk.

_FAULT_ENV = "AESAMPLER_FAULT_AT"
_fault_count = 0


def fault_point(label: str) -> None:
    """With ``AESAMPLER_FAULT_AT=N`` set, the N-th call ends the process at once (no cleanup)."""
    global _fault_count
    target = os.environ.get(_FAULT_ENV)
    if not target:
        return
    _fault_count += 1
    if _fault_count == int(target):
        os._exit(137)  # what SIGKILL leaves: no finally blocks, no flushes


# ----------------------------------------------------------------------------------------------
# Reading back what aesampler wrote


def read_json(path: Path, what: str, limit: int | None = None) -> Any:
    """A JSON file aesampler wrote, or one clear error naming it when it is damaged (or, with
    ``limit``, larger than that many bytes)."""
    try:
        with open(path, "rb") as file:
            raw = file.read() if limit is None else file.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise RunDirError(
                f"{_q(path)} ({what}) is larger than {limit // 1024} KiB, far more than "
                "aesampler writes there: it is damaged or was edited, and aesampler will not "
                "read it"
            )
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{_q(path)} does not exist ({what})") from None
    except OSError as error:
        raise RunDirError(f"cannot read {_q(path)} ({what}): {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise RunDirError(
            f"{_q(path)} ({what}) is not UTF-8 text (byte {error.start}): it was not written "
            "by aesampler, or it is damaged"
        ) from None
    except RecursionError:
        raise RunDirError(
            f"{_q(path)} ({what}) nests too deeply to be a file aesampler wrote: it is "
            "damaged or was edited"
        ) from None
    except json.JSONDecodeError as error:
        raise RunDirError(
            f"{_q(path)} ({what}) is not valid JSON (line {error.lineno}, column "
            f"{error.colno}: {error.msg}): it is damaged or was edited; re-create it with the "
            "command that wrote it"
        ) from None


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (ids below 1 are never a writer's)."""
    if not isinstance(pid, int) or pid < 1:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_path(path: Path) -> None:
    """Remove a file, a folder, or a link itself (a link is never followed)."""
    _remove(Path(path))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


_ALL_ENTRIES = {entry for entries in OUTPUTS.values() for entry in entries}
#: Commands that also write ``recipe.yaml`` in their transaction when the directory has none yet.
WRITES_RECIPE = frozenset({"sample", "interpolate", "inpaint", "evaluate", "samplers", "tune"})
#: Commands that write their outputs in place (``Transaction.direct``) rather than under a
#: staging name, and that replace the other commands' outputs (``replace``): training only.
WRITES_IN_PLACE = frozenset({"train"})


def transaction_problem(
    command: Any,
    entries: Iterable[Any],
    replace: Iterable[Any] = (),
    existed: Iterable[Any] = (),
    direct: Iterable[Any] = (),
    swapping: Iterable[Any] = (),
) -> str | None:
    """What makes a transaction of this shape one aesampler never opens, or None.

    A transaction writes exactly its command's outputs (:data:`OUTPUTS`), plus ``recipe.yaml``
    for the commands in :data:`WRITES_RECIPE`; only training (:data:`WRITES_IN_PLACE`) writes
    entries in place (``direct``) and replaces the other commands' outputs (``replace``). What
    existed before it began is among its entries; what it swaps in is among those it stages.
    """
    if command not in OUTPUTS:
        return f"{command!r} is not a command that writes a run directory"
    entries, replace, existed = list(entries), list(replace), list(existed)
    direct, swapping = list(direct), list(swapping)
    lists = (entries, replace, existed, direct, swapping)
    if any(len(set(map(repr, values))) != len(values) for values in lists):
        return "an entry is named twice"
    own = set(OUTPUTS[command])
    allowed = own | ({RECIPE} if command in WRITES_RECIPE else set())
    if not own <= set(entries) or not set(entries) <= allowed:
        extra = " (and recipe.yaml when the directory has none)" if command in WRITES_RECIPE else ""
        return f"a {command} writes {sorted(own)}{extra}, not {entries}"
    if replace and command not in WRITES_IN_PLACE:
        return f"a {command} replaces no other command's outputs, yet it lists {replace}"
    if not set(replace) <= _ALL_ENTRIES - set(entries):
        return f"it replaces {replace}, which are not other commands' outputs"
    if not set(existed) <= set(entries) | set(replace):
        return f"what existed before it ({existed}) is not among its entries"
    if direct and command not in WRITES_IN_PLACE:
        return f"a {command} writes nothing in place, yet it lists {direct} as written so"
    if not set(direct) <= set(entries):
        return f"it writes {direct} in place, which are not among its entries"
    if not set(swapping) <= set(entries) - set(direct):
        return f"it swaps in {swapping}, which are not among the entries it stages"
    return None


# Temporary names aesampler itself makes, by folder, each ending in the writer's process id.
_TOP_TEMPORARY = re.compile(
    r"^(?:\.(?:"
    + "|".join(re.escape(e) for e in sorted({*_ALL_ENTRIES, MANIFEST}))
    + r")\.tmp-|"
    + re.escape(_STAGING)
    + "(?:"
    + "|".join(re.escape(e) for e in sorted(_ALL_ENTRIES))
    + r")-)(\d+)$"
)
_INNER_TEMPORARY = {
    CHECKPOINTS: re.compile(r"^(?:\.tmp-step-\d{8,}-|\.latest\.tmp-)(\d+)$"),
    IMAGES: re.compile(r"^\.epoch-\d{3,}-[a-z]+\.png\.tmp-(\d+)$"),
    FITTED: re.compile(r"^\.tmp-[a-z][a-z0-9_]*-[0-9a-f]{12}-(\d+)$"),
    PARTIAL: re.compile(r"^\.tmp-[a-z][a-z0-9_]*-[0-9a-f]{12}-(\d+)$"),
}
CHECKPOINT_NAME = re.compile(r"^step-\d{8,}$")  # the folders save_checkpoint makes
_PARTIAL_TEMPORARY = re.compile(r"^\.shard-\d{5,}\.safetensors\.tmp-(\d+)$")
_PARTIAL_RUN = re.compile(r"^samples-[0-9a-f]{12}$")  # the folders partial_folder makes

# One lock per run directory and process, re-entrant: flock locks belong to open files, so a
# second open of the lock file in the same process would wait for the first forever.
_HELD: dict[str, tuple[Any, int]] = {}
# The locks this process holds on ``partial/NAME/`` folders (RunDir.partial_folder), by folder.
_PARTIAL_LOCKS: dict[str, Any] = {}


def _check_manifest(document: Any, path: Path) -> dict[str, Any]:
    """The manifest, if every part of it is what aesampler writes; else one clear error."""

    def bad(problem: str) -> RunDirError:
        return RunDirError(
            f"{_q(path)} is damaged or was edited ({problem}); aesampler will not act on it. "
            "Restore it, or move the run's files to a new folder"
        )

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RunDirError(
            f"{_q(path)} is not an aesampler run manifest (no format {FORMAT!r}); "
            f"aesampler will not write into {_q(path.parent)}"
        )
    if document.get("version") != VERSION:
        raise RunDirError(
            f"{_q(path)} has manifest version {document.get('version')!r}; this aesampler "
            f"reads version {VERSION}"
        )
    entries = document.setdefault("entries", {})
    if not isinstance(entries, dict):
        raise bad("'entries' is not an object")
    for name, about in entries.items():
        if name not in _ALL_ENTRIES or not isinstance(about, dict):
            raise bad(f"'entries' lists {name!r}, which is not an output aesampler writes")
    pending = document.setdefault("pending", {})
    if not isinstance(pending, dict):
        raise bad("'pending' is not an object")
    for txn_id, record in pending.items():
        ok = (
            isinstance(record, dict)
            and record.get("command") in OUTPUTS
            and isinstance(record.get("pid"), int)
            and not isinstance(record.get("pid"), bool)
            and record["pid"] > 0
            and isinstance(record.get("backup"), str)
            and _BACKUP_NAME.match(record["backup"]) is not None
            and isinstance(record.get("lock"), str)
            and _LOCK_NAME.match(record["lock"]) is not None
            and all(
                isinstance(record.get(key), list)
                and all(isinstance(e, str) and e in _ALL_ENTRIES for e in record[key])
                for key in ("entries", "replace", "existed", "direct")
            )
            and isinstance(record.get("swapping", []), list)
            and all(e in _ALL_ENTRIES for e in record.get("swapping", []))
            and isinstance(record.get("created_dir", False), bool)
        )
        if not ok:
            raise bad(f"the open transaction {txn_id!r} is not one aesampler records")
        # Its backup folder and lock file are named after it: command, process id, serial.
        made = f"{record['command']}-{record['pid']}-"
        serial = record["backup"][len(_BACKUP) + len(made) :]
        if not (
            record["backup"].startswith(_BACKUP + made)
            and record["lock"] == f"{_TXN_LOCK}{made}{serial}.lock"
        ):
            raise bad(
                f"the open transaction {txn_id!r} names a backup or lock of another transaction"
            )
        problem = transaction_problem(
            record["command"],
            record["entries"],
            record["replace"],
            record["existed"],
            record["direct"],
            record.get("swapping", []),
        )
        if problem is not None:
            raise bad(f"the open transaction {txn_id!r} is not one aesampler writes: {problem}")
    components = document.setdefault("components", {})
    if not isinstance(components, dict) or not all(
        isinstance(names, dict) and all(isinstance(v, dict) for v in names.values())
        for names in components.values()
    ):
        raise bad("'components' is not an object of objects")
    return document


class RunDir:
    """One run directory: what aesampler wrote there, and safe ways to write more.

    Args:
        path: the directory (it need not exist yet). A leading ``~`` is the home folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({_q(self.path)})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- state -----------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.path.exists()

    def is_empty(self) -> bool:
        """True when the directory does not exist, or holds nothing (or only a stale lock)."""
        if not self.path.exists():
            return True
        return all(p.name == LOCK for p in self.path.iterdir())

    def is_aesampler(self) -> bool:
        return self.manifest_path.is_file()

    def is_legacy_run(self) -> bool:
        """A training run made by an aesampler older than manifests (no manifest yet)."""
        return not self.is_aesampler() and (self.path / CHECKPOINTS / "latest").is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest (an empty one when the directory has none yet), checked."""
        if not self.manifest_path.is_file():
            return {"format": FORMAT, "version": VERSION, "entries": {}, "pending": {}}
        document = read_json(self.manifest_path, "the run directory's manifest", MAX_MANIFEST)
        return _check_manifest(document, self.manifest_path)

    def owned(self) -> dict[str, dict[str, Any]]:
        """Entry name -> what the manifest says about it (the command that wrote it, when)."""
        return dict(self.manifest()["entries"])

    def components(self) -> dict[str, dict[str, Any]]:
        """What provided each component the run used, as recorded: kind -> name -> provenance."""
        return dict(self.manifest().get("components", {}))

    # -- writing the manifest --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise manifest updates and recovery between processes (re-entrant)."""
        key = str(self.path.resolve())
        if key in _HELD:
            handle, depth = _HELD[key]
            _HELD[key] = (handle, depth + 1)
            try:
                yield
            finally:
                _HELD[key] = (handle, _HELD[key][1] - 1)
            return
        with open(self.path / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            _HELD[key] = (handle, 1)
            try:
                yield
            finally:
                del _HELD[key]
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _update(self, change) -> dict[str, Any]:
        with self._locked():
            document = self.manifest()
            change(document)
            document["aesampler_version"] = __version__
            write_json(self.manifest_path, document)
            return document

    def record_components(self, components: dict[str, dict[str, Any]]) -> None:
        """Remember which distribution (and version) provided each component the run used."""

        def change(document):
            known = document.setdefault("components", {})
            for kind, names in components.items():
                known.setdefault(kind, {}).update(names)

        self._update(change)

    def adopt_training(self) -> None:
        """Take a pre-manifest training run's outputs as aesampler's (it has a checkpoint)."""
        if not self.is_legacy_run():
            return

        def change(document):
            document.setdefault("created", _now())
            for entry in OUTPUTS["train"]:
                if _exists(self.path / entry):
                    document["entries"][entry] = {"command": "train", "written": "adopted"}

        self._update(change)

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoints_folder(self) -> Path:
        """``checkpoints/``, where training writes and deletes checkpoints: refused when it is
        a link (aesampler deletes old checkpoints there, and would delete them wherever the
        link points, in a folder it cannot prove it owns)."""
        folder = self.path / CHECKPOINTS
        if folder.is_symlink():
            raise RunDirError(
                f"{_q(folder)} is a symbolic link (to {os.readlink(folder)!r}); aesampler "
                "writes and deletes checkpoints only in a real folder of the run, so it will "
                "not train there. To keep a run on a bigger disk, move the whole run directory "
                "there and point output.dir (--out) at it, or bind-mount the folder; nothing "
                "was changed"
            )
        return folder

    def drop_old_checkpoints(self, keep: str) -> list[str]:
        """Remove the checkpoint folders in ``checkpoints/`` but ``keep``.

        Only folders named as aesampler names them (``step-NNNNNNNN``) are removed, and never
        through a link: a link in ``checkpoints/`` is left alone, as is anything else there
        (your ``step-00000003-keep-me/``, ``step-notes.txt``). Temporary folders of dead writers
        are :meth:`recover`'s to tidy. Returns the names removed.
        """
        folder = self.checkpoints_folder()
        removed = []
        for item in folder.iterdir():
            if item.name == keep or not CHECKPOINT_NAME.match(item.name):
                continue
            if item.is_symlink() or not item.is_dir():
                continue  # aesampler makes neither links nor files by that name
            _remove(item)
            removed.append(item.name)
        return removed

    # -- opening ---------------------------------------------------------------------------

    def _refuse_inside_an_output(self) -> None:
        """Refuse a directory inside an output of another run (that run would replace it)."""
        here = self.path.resolve()
        for ancestor in here.parents:
            manifest = ancestor / MANIFEST
            if manifest.is_file():
                entry = here.relative_to(ancestor).parts[0]
                owned = RunDir(ancestor).owned()
                if entry in owned or entry in _ALL_ENTRIES:
                    raise RunDirError(
                        f"{_q(self.path)} lies inside {_q(ancestor / entry)}, an output of "
                        f"the run {_q(ancestor)} that aesampler replaces; choose an output.dir "
                        "outside it"
                    )

    def create(self) -> bool:
        """Make the directory and its manifest; True if this call created the directory.

        A directory that exists must be empty or already aesampler's; a run directory made by
        an aesampler without manifests (it has ``checkpoints/latest``) is adopted: only its
        training outputs are taken as aesampler's.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"the output directory {_q(self.path)} is a file, not a folder")
        self._refuse_inside_an_output()
        created = not self.path.exists()
        if not created and not self.is_aesampler() and not self.is_empty():
            self._refuse_foreign()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"cannot create the output directory {_q(self.path)}: {error.strerror}"
            ) from None
        if self.is_legacy_run():
            self.adopt_training()
        elif not self.is_aesampler():
            self._update(lambda document: document.setdefault("created", _now()))
        return created

    def _refuse_foreign(self) -> None:
        """Raise unless the folder is aesampler's, or a run made before manifests existed."""
        if self.is_legacy_run():
            return
        raise RunDirError(
            f"{_q(self.path)} is not empty and was not made by aesampler (it holds no "
            f"{MANIFEST}); aesampler never deletes or writes into a folder it cannot prove it "
            "wrote. Choose another output.dir (--out), or empty that folder yourself"
        )

    def check_replaceable(self, command: str, entries: Iterable[str], overwrite: bool) -> None:
        """Raise unless writing ``entries`` loses nothing.

        Each entry must be absent, or listed in the manifest as aesampler's when ``overwrite``
        is set. Interrupted transactions are rolled back first (:meth:`recover`).
        """
        self.recover()
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"the output directory {_q(self.path)} is a file, not a folder")
        self._refuse_inside_an_output()
        if not self.path.exists() or self.is_empty():
            return
        if not self.is_aesampler():
            self._refuse_foreign()
        owned = self.owned() if self.is_aesampler() else {}
        if not owned and self.is_legacy_run():
            owned = {e: {} for e in OUTPUTS["train"] if _exists(self.path / e)}
        for entry in entries:
            target = self.path / entry
            if not _exists(target):
                continue
            if entry not in owned:
                raise RunDirError(
                    f"{_q(target)} exists but the manifest {MANIFEST} does not list it as "
                    f"aesampler's output, so aesampler will not replace it; move it away, or "
                    "choose another output.dir (--out)"
                )
            if not overwrite and command == "train":
                raise RunDirError(
                    f"the run directory {_q(self.path)} already exists; pass --resume to "
                    "continue that run, --overwrite to replace aesampler's outputs in it, or "
                    "choose another output.dir (--out)"
                )
            if not overwrite:
                raise RunDirError(
                    f"{_q(target)} already exists; pass --overwrite to replace it (only "
                    f"{entry}), or choose another output.dir (--out)"
                )

    def check_collection(self, entry: str) -> None:
        """Raise unless ``entry`` (``fitted/``, ``partial/``: folders that collect one folder
        per settings) is absent or a real folder of the run that the manifest lists.

        Checked before the work whose result goes there, not only when it is saved."""
        target = self.path / entry
        if not _exists(target):
            return
        if target.is_symlink():
            raise RunDirError(
                f"{_q(target)} is a symbolic link (to {_q(os.readlink(target))}); aesampler "
                f"writes and deletes in {entry}/ only in a real folder of the run, never "
                "where a link points. Remove the link (aesampler then makes the folder), or "
                "move the folder it points to into its place; nothing was changed"
            )
        if not target.is_dir():
            raise RunDirError(
                f"{_q(target)} is not a folder; aesampler keeps {entry}/ as a folder there. Move "
                "it away; nothing was changed"
            )
        if entry not in self.owned():
            raise RunDirError(
                f"{_q(target)} exists but the manifest {MANIFEST} does not list it as "
                "aesampler's output; move it away, or choose another output.dir (--out)"
            )

    @contextlib.contextmanager
    def new_folder(self, entry: str, name: str, command: str) -> Iterator[Path]:
        """A staging folder that becomes ``entry/name`` when the block ends without error.

        For entries that collect folders (``fitted/``): the first one is written in a
        transaction that creates the entry; later ones are renamed into the existing entry.
        An existing ``entry/name`` is replaced; nothing else in the entry is touched.
        """
        self.recover()
        if not _exists(self.path / entry):
            with self.transaction(command, [entry]) as txn:
                staged = txn.path(entry) / name
                staged.mkdir(parents=True)
                yield staged
            return
        target = self.path / entry
        self.check_collection(entry)
        staged = target / f".tmp-{name}-{os.getpid()}"
        _remove(staged)
        staged.mkdir()
        try:
            yield staged
            final = target / name
            if _exists(final):
                _remove(final)
            fault_point(f"swap in {entry}/{name}")
            os.replace(staged, final)
            fsync_dir(target)
        except BaseException:
            _remove(staged)
            raise

    def partial_folder(self, name: str) -> tuple[Path, list[int]]:
        """``partial/NAME/``, where a long command keeps what it finished until it completes.

        The folder is reused when it exists (a killed run resumes from it: returned with the
        indices of the shards it holds) and created otherwise. This process holds the lock in
        the folder (``partial/NAME/.aesampler-lock``, naming its pid) until
        :meth:`release_partial` or :meth:`drop_partial`, or until it ends: a folder whose lock
        another live process holds is never removed, and is refused here (that process writes
        the same shards). Every other folder in ``partial/`` whose writer is gone is an
        unfinished run with other settings, and is removed. Temporary files of dead writers
        inside the folder are removed too.
        """
        self.recover()
        entry = self.path / PARTIAL
        if not self.path.is_dir():  # a new run directory: its first output makes it (and the
            with self.new_folder(PARTIAL, name, "partial"):  # lock file), and nobody is in it
                pass
        with self._locked():  # deciding who is alive and taking the lock are one step
            self.check_collection(PARTIAL)
            if entry.is_dir():
                self._drop_partials(keep=name)
            folder = entry / name
            owner = self._partial_owner(folder)
            if owner is not None:
                raise RunDirError(
                    f"{_q(folder)} is in use by another aesampler "
                    f"{owner.get('command', 'sample')} (pid {owner.get('pid', 'unknown')}) "
                    "with these same settings; wait for it to finish, or stop it and run again "
                    "(the shards it finished are kept)"
                )
            if not folder.is_dir():
                with self.new_folder(PARTIAL, name, "partial"):
                    pass
            self._hold_partial(folder)
        done = []
        for item in folder.iterdir():
            temporary = _PARTIAL_TEMPORARY.match(item.name)
            if temporary and not _pid_alive(int(temporary.group(1))):
                item.unlink()
            elif re.fullmatch(r"shard-(\d{5,})\.safetensors", item.name) and item.is_file():
                done.append(int(item.name[6:-12]))
        return folder, sorted(done)

    def _partial_key(self, folder: Path) -> str:
        return str(folder.parent.resolve() / folder.name)

    def _partial_owner(self, folder: Path) -> dict[str, Any] | None:
        """The live process (``{"pid", "command"}``) that holds ``partial/NAME/``'s lock, or
        None. Locks this process holds are not another's: it runs one command at a time, so
        one it holds for another folder is that of a command that ended."""
        lock = folder / LOCK
        if self._partial_key(folder) in _PARTIAL_LOCKS:
            return None
        if lock.is_symlink() or not lock.is_file() or not _held(lock):
            return None
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            owner = None  # being written this moment
        return owner if isinstance(owner, dict) else {}

    def _hold_partial(self, folder: Path, command: str = "sample") -> None:
        """Take ``folder``'s lock for this process (kept until released or the process ends)."""
        key = self._partial_key(folder)
        if key in _PARTIAL_LOCKS:
            return
        lock = folder / LOCK
        if lock.is_symlink():
            lock.unlink()  # aesampler makes no link there
        handle = open(lock, "a+")  # noqa: SIM115 (closed by release_partial)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunDirError(
                f"{_q(folder)} is in use by another aesampler process; wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": command, "started": _now()}))
        handle.flush()
        _PARTIAL_LOCKS[key] = handle

    def release_partial(self, name: str) -> None:
        """Give up this process's lock on ``partial/NAME/`` (its folder stays, to resume)."""
        handle = _PARTIAL_LOCKS.pop(self._partial_key(self.path / PARTIAL / name), None)
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def partial_bytes(self) -> int:
        """Bytes of the files in ``partial/``: a resumed run reuses them, and a run with other
        settings deletes them, so either way they are room for the run that starts (those of a
        live run with other settings are neither, and are not counted)."""
        entry = self.path / PARTIAL
        if not entry.is_dir() or entry.is_symlink() or PARTIAL not in self.owned():
            return 0
        total = 0
        for item in entry.iterdir():
            if item.is_symlink() or self._partial_owner(item) is not None:
                continue
            files = [item] if item.is_file() else item.rglob("*") if item.is_dir() else []
            total += sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())
        return total

    def _drop_partials(self, keep: str | None = None) -> None:
        """Remove every run's folder in ``partial/`` but ``keep`` and those of live writers:
        only the names :meth:`partial_folder` makes (staging folders are :meth:`recover`'s to
        tidy, and anything else is left alone)."""
        with self._locked():
            for item in (self.path / PARTIAL).iterdir():
                if item.name == keep or item.is_symlink() or not item.is_dir():
                    continue
                if not _PARTIAL_RUN.match(item.name):
                    continue  # not a name aesampler makes there (its dead staging: recover())
                if self._partial_owner(item) is not None:
                    continue  # a live sample's progress, with other settings: never removed
                self.release_partial(item.name)  # a lock of this process's that ended
                _remove(item)  # another run's leftovers: its writer is gone

    def drop_partial(self, name: str | None = None) -> None:
        """Remove ``partial/NAME/`` (its run completed, in this process; with no name, every
        run's whose writer is gone), and ``partial/`` once it is empty."""
        entry = self.path / PARTIAL
        if not entry.is_dir() or entry.is_symlink() or PARTIAL not in self.owned():
            return
        with self._locked():
            if name is None:
                self._drop_partials()
            elif (entry / name).is_dir() and not (entry / name).is_symlink():
                if self._partial_owner(entry / name) is None:
                    _remove(entry / name)  # while its lock is held: nobody takes it meanwhile
                self.release_partial(name)
            if not any(entry.iterdir()):
                entry.rmdir()

                def change(document):
                    document["entries"].pop(PARTIAL, None)

                self._update(change)

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(
        self, command: str, entries: Iterable[str], *, replace: Iterable[str] = ()
    ) -> Iterator[Transaction]:
        """Write ``entries`` for ``command``; the old ones (and ``replace``) survive a failure.

        Inside the block, write each entry at ``txn.path(entry)`` (a staging name for outputs
        made in one go) or, with ``txn.direct(entry)``, at its final place (for training, which
        must be resumable while it runs). Leaving the block normally commits; an exception (or a
        kill, noticed by the next :meth:`recover`) rolls back: new entries are removed and the
        old ones restored.
        """
        self.recover()
        txn = Transaction(self, command, list(entries), list(replace))
        txn.begin()
        try:
            yield txn
            txn.commit()
        except BaseException:
            txn.rollback()
            raise
        finally:
            txn.release()

    def recover(self) -> list[str]:
        """Roll back transactions of processes that died; delete their temporary files.

        A transaction is alive while its process holds the lock on its lock file; one whose
        lock can be taken is a dead writer's (whatever process now has its id). Returns a line
        per thing done. Every command calls this before it writes.
        """
        if not self.path.is_dir() or not self.is_aesampler():
            return []  # only a directory aesampler has marked as its own is ever tidied
        done: list[str] = []
        with self._locked():
            dead = []
            for txn_id, record in self.manifest()["pending"].items():
                txn = Transaction.from_record(self, txn_id, record)
                if not txn.owner_is_alive():
                    dead.append(txn)
            for txn in dead:  # every one checked before any of them moves anything
                txn.check_rollback()
            for txn in dead:
                done += txn.rollback()
                txn.release()
            if self.path.is_dir():  # (a rollback removes a directory its transaction made)
                done += self._sweep()
        return done

    def _sweep(self) -> list[str]:
        """Delete temporary files of dead writers: only names aesampler makes, no links."""
        done = []
        places: list[tuple[Path, re.Pattern]] = [(self.path, _TOP_TEMPORARY)]
        owned = self.owned()
        for entry, pattern in _INNER_TEMPORARY.items():
            folder = self.path / entry
            if entry in owned and folder.is_dir() and not folder.is_symlink():
                places.append((folder, pattern))
        for folder, pattern in places:
            for item in folder.iterdir():
                match = pattern.match(item.name)
                if match and not _pid_alive(int(match.group(1))):
                    _remove(item)
                    done.append(f"removed {item.relative_to(self.path)}")
        # Lock files and backups of transactions that are no longer open (a backup whose drop
        # failed after its transaction committed).
        pending = self.manifest()["pending"].values()
        in_use = {r["lock"] for r in pending} | {r["backup"] for r in pending}
        for item in self.path.iterdir():
            if item.name in in_use or item.is_symlink():
                continue
            if _LOCK_NAME.match(item.name) and not _held(item):
                item.unlink(missing_ok=True)  # a lock nobody holds (a transaction about to
                # record itself holds its lock first, so it is never taken from under it)
            elif _BACKUP_NAME.match(item.name):
                _remove(item)
                done.append(f"removed {item.name}, left by a committed transaction")
        return done


def _held(lock: Path) -> bool:
    """Whether some process holds the flock on this file."""
    try:
        handle = open(lock, "a")  # noqa: SIM115 (closed below)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class Transaction:
    """An open replacement of some run-directory entries (see :meth:`RunDir.transaction`).

    The manifest records it while it is open: its entries, which of them existed before it
    began, which it writes in place or is swapping in, its backup folder and its lock file.
    Rollback follows one rule that is safe to repeat: an entry with a copy in the backup gets
    that copy back; an entry this transaction created is removed; anything else is left alone.
    A transaction read back from the manifest (a dead writer's) must also prove, before anything
    moves, that what it would remove is its own (:meth:`check_rollback`).
    """

    def __init__(self, run_dir: RunDir, command: str, entries: list[str], replace: list[str]):
        unknown = [e for e in [*entries, *replace] if e not in _ALL_ENTRIES]
        if unknown:
            raise RunDirError(f"not run-directory entries: {unknown}")
        replace = [e for e in replace if e not in entries]
        problem = transaction_problem(command, entries, replace)
        if problem is not None:  # a bug: the table above says what each command writes
            raise RunDirError(f"aesampler opens no such transaction: {problem}")
        self.run_dir = run_dir
        self.command = command
        self.entries = entries
        self.replace = replace
        self.pid = os.getpid()
        serial = time.monotonic_ns()
        self.id = f"{command}-{self.pid}-{serial}"
        self.backup = run_dir.path / f"{_BACKUP}{command}-{self.pid}-{serial}"
        self.lock = run_dir.path / f"{_TXN_LOCK}{command}-{self.pid}-{serial}.lock"
        self.existed: set[str] = set()
        self.direct_entries: set[str] = set()
        self.swapping: set[str] = set()
        self.created_dir = False
        self.recovered = False  # read back from the manifest: a dead writer's
        self._open = False
        self._lock_handle = None

    @classmethod
    def from_record(cls, run_dir: RunDir, txn_id: str, record: dict) -> Transaction:
        txn = cls(run_dir, record["command"], record["entries"], record["replace"])
        txn.id, txn.pid = txn_id, record["pid"]
        txn.backup = run_dir.path / record["backup"]
        txn.lock = run_dir.path / record["lock"]
        txn.existed = set(record["existed"])
        txn.direct_entries = set(record["direct"])
        txn.created_dir = record.get("created_dir") is True
        txn.swapping = set(record.get("swapping", []))
        txn.recovered = True
        txn._open = True
        return txn

    def _record(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "pid": self.pid,
            "started": _now(),
            "entries": self.entries,
            "replace": self.replace,
            "existed": sorted(self.existed),
            "direct": sorted(self.direct_entries),
            "backup": self.backup.name,
            "lock": self.lock.name,
            "created_dir": self.created_dir,
            "swapping": sorted(self.swapping),
        }

    def _staging(self, entry: str) -> Path:
        return self.run_dir.path / f"{_STAGING}{entry}-{self.pid}"

    def owner_is_alive(self) -> bool:
        """Whether the process that opened this transaction still holds its lock (a missing
        lock file, or a link, is nobody's: aesampler makes its lock file before it records the
        transaction, and removes it only once the transaction is closed)."""
        if self.lock.is_symlink() or not self.lock.is_file():
            return False
        return _held(self.lock)

    def _made_since_it_began(self, path: Path) -> str | None:
        """None when everything at ``path`` (the folder, its files and folders, links not
        followed) changed after this transaction took its lock; else what is older, or why
        that cannot be told.

        The lock file is made just before the transaction is recorded, and a file's change time
        (ctime) is set by the kernel on every write, rename or link and cannot be set back: a
        forged record cannot make files that were there before it look new.
        """
        if self.lock.is_symlink() or not self.lock.is_file():
            return "its lock file is missing, so when it began is unknown"
        began = self.lock.lstat().st_ctime_ns - _CLOCK_SLACK_NS
        if path.lstat().st_ctime_ns < began:
            return f"{_q(path)} is older than that transaction"
        if not path.is_dir() or path.is_symlink():
            return None
        for folder, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                item = Path(folder) / name
                if item.lstat().st_ctime_ns < began:
                    return f"{_q(item)} is older than that transaction"
        return None

    def check_rollback(self) -> None:
        """Raise, before anything moves, unless rolling this dead writer's transaction back
        removes only what it wrote.

        Restoring a backed-up entry to an empty place loses nothing and needs no proof. Removing
        an entry does: the entry must be one the transaction says it wrote (in place or by
        swapping it in), it must hold nothing older than the transaction, and, unless the
        transaction backed up an older one, the manifest must not list it as an earlier output
        (aesampler drops the listing of a missing entry when a transaction begins). Its backup
        folder must be a folder (not a link) holding only entries of that transaction.
        """
        root = self.run_dir.path
        listed = self.run_dir.owned()

        def refuse(target: Path, reason: str) -> RunDirError:
            return RunDirError(
                f"{_q(self.run_dir.manifest_path)} records an interrupted {self.command} "
                f"({self.id!r}) whose rollback would remove {_q(target)}, but {reason}: "
                "aesampler did not write it in that transaction, so it will not act on that "
                "record and changed nothing. If it is yours, move it out of the run directory "
                "and run again"
            )

        if _exists(self.backup):
            if self.backup.is_symlink() or not self.backup.is_dir():
                raise refuse(self.backup, "it is not a folder aesampler made")
            mine = {*self.entries, *self.replace}
            for item in self.backup.iterdir():
                if item.name not in mine:
                    raise refuse(item, f"it is not one of the {self.command}'s entries")
        for entry in [*self.entries, *self.replace]:
            target = root / entry
            if not _exists(target):
                continue
            backed_up = _exists(self.backup / entry)
            removed_as_new = (
                entry not in self.existed
                and (entry in self.direct_entries or entry in self.swapping)
                and not _exists(self._staging(entry))
            )
            if not backed_up and not removed_as_new:
                continue  # left alone
            if entry not in self.direct_entries and entry not in self.swapping:
                raise refuse(target, "that transaction never wrote it")
            if not backed_up and entry in listed:
                raise refuse(target, "the manifest lists it as an output from before")
            problem = self._made_since_it_began(target)
            if problem is not None:
                raise refuse(target, problem)

    def begin(self) -> None:
        self.created_dir = self.run_dir.create()
        # Under the directory's lock, as the sweep of stale lock files is: the transaction's own
        # lock is taken before anyone can see its file, and recorded before anyone can sweep.
        with self.run_dir._locked():
            self._lock_handle = open(self.lock, "a")  # noqa: SIM115 (closed by release)
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX)
            root = self.run_dir.path
            self.existed = {e for e in [*self.entries, *self.replace] if _exists(root / e)}
            record = self._record()

            def change(document):
                # An entry the manifest lists but that is gone (removed by hand) is listed no
                # more: a rollback removes only entries the manifest does not list.
                for entry in [*self.entries, *self.replace]:
                    if entry not in self.existed:
                        document["entries"].pop(entry, None)
                document["pending"][self.id] = record

            self.run_dir._update(change)
            self._open = True

    def release(self) -> None:
        """Give up the transaction's lock and remove its lock file."""
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None
        self.lock.unlink(missing_ok=True)

    def path(self, entry: str) -> Path:
        """Where to write ``entry``: a staging name, renamed into place at commit."""
        if entry not in self.entries:
            raise ValueError(f"{entry!r} is not an entry of this transaction: {self.entries}")
        return self._staging(entry)

    def direct(self, entry: str) -> Path:
        """``entry``'s final path, written in place; the old one is moved to the backup now."""
        if entry not in self.entries:
            raise ValueError(f"{entry!r} is not an entry of this transaction: {self.entries}")
        if entry not in self.direct_entries:
            self._move_to_backup(entry)
            self.direct_entries.add(entry)
            record = self._record()
            self.run_dir._update(lambda d: d["pending"].__setitem__(self.id, record))
        return self.run_dir.path / entry

    def _move_to_backup(self, entry: str) -> None:
        final = self.run_dir.path / entry
        if _exists(final) and not _exists(self.backup / entry):
            self.backup.mkdir(exist_ok=True)
            fault_point(f"back up {entry}")
            os.replace(final, self.backup / entry)

    def commit(self) -> None:
        """Swap the staged entries in, record them in the manifest, drop the backup."""
        if not self._open:
            return
        root = self.run_dir.path
        with self.run_dir._locked():
            for entry in [*self.entries, *self.replace]:
                target = root / entry
                if entry in self.existed or entry in self.direct_entries:
                    continue
                if _exists(target):  # it appeared while we worked: someone else's
                    raise RunDirError(
                        f"{_q(target)} appeared while aesampler was writing it; nothing was "
                        "replaced. Move it away and run again"
                    )
            # Record what is about to be swapped in: a rollback removes only what it wrote.
            self.swapping = {
                e
                for e in self.entries
                if e not in self.direct_entries and _exists(self._staging(e))
            }
            record = self._record()
            self.run_dir._update(lambda d: d["pending"].__setitem__(self.id, record))
            for entry in self.replace:
                self._move_to_backup(entry)
            for entry in self.entries:
                if entry not in self.swapping:
                    continue  # written in place, or nothing was written: the old one stays
                staged = self._staging(entry)
                self._move_to_backup(entry)
                fault_point(f"swap in {entry}")
                os.replace(staged, root / entry)
            fsync_dir(root)
            written = [e for e in self.entries if _exists(root / e)]

            def change(document):
                for entry in self.replace:
                    document["entries"].pop(entry, None)
                for entry in written:
                    document["entries"][entry] = {"command": self.command, "written": _now()}
                document["pending"].pop(self.id, None)

            fault_point("commit manifest")
            self.run_dir._update(change)
            self._open = False
            if _committed is not None and self.command not in _BOOKKEEPING:
                _committed.extend(root / e for e in written if root / e not in _committed)
        if self.backup.exists():
            fault_point("drop backup")
            # Committed all the same if this fails: the next command's recovery retries.
            with contextlib.suppress(OSError):
                shutil.rmtree(self.backup)

    def rollback(self) -> list[str]:
        """Remove what this transaction wrote and put the old entries back (repeatable)."""
        if not self._open:
            return []
        root = self.run_dir.path
        done = []
        with self.run_dir._locked():
            if self.recovered:
                self.check_rollback()
            for entry in self.entries:
                staged = self._staging(entry)
                # Named after the record's process: if another live process has that id now,
                # the staging may be its own, and is left for the sweep once it is gone.
                theirs = self.pid != os.getpid() and _pid_alive(self.pid)
                if _exists(staged) and not (self.recovered and theirs):
                    _remove(staged)
            for entry in [*self.entries, *self.replace]:
                kept = self.backup / entry
                if _exists(kept):
                    if _exists(root / entry):
                        _remove(root / entry)
                    os.replace(kept, root / entry)
                    done.append(f"restored {entry} from before an interrupted {self.command}")
                elif (
                    entry not in self.existed
                    and (entry in self.direct_entries or entry in self.swapping)
                    and not _exists(self._staging(entry))
                    and _exists(root / entry)
                ):
                    _remove(root / entry)
                    done.append(f"removed the unfinished {entry} of an interrupted {self.command}")
            if self.backup.is_dir() and not self.backup.is_symlink():
                if self.recovered:
                    self.backup.rmdir()  # emptied above: it held only this transaction's entries
                else:
                    shutil.rmtree(self.backup)
            self.run_dir._update(lambda d: d["pending"].pop(self.id, None))
            self._open = False
            manifest = self.run_dir.manifest()
            leftover = [
                p
                for p in root.iterdir()
                if p.name not in (MANIFEST, LOCK) and not _LOCK_NAME.match(p.name)
            ]
            empty = not manifest["entries"] and not manifest["pending"] and not leftover
            if self.created_dir and empty:
                # The directory did not exist before this transaction made it: leave no trace.
                shutil.rmtree(root)
                done.append(f"removed {root}, made by an interrupted {self.command}")
        return done


def _q(path: str | Path) -> str:
    return quoted(path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
