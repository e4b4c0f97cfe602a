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
    samples/                 grids, steps.png, samples.safetensors, settings.json   (sample)
    interpolation/           interpolation.png, .safetensors, settings.json         (interpolate)
    metrics.json             sample quality at every evaluated step                 (evaluate)
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

from . import __version__
from .errors import AesamplerError

MANIFEST = "aesampler-run.json"
LOCK = ".aesampler-lock"
RECIPE = "recipe.yaml"
TRAIN_LOG = "metrics.jsonl"
IMAGES = "images"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
INTERPOLATION = "interpolation"
METRICS = "metrics.json"
REPORT = "report.html"
REPORT_ASSETS = "report"
# Inside output folders.
SETTINGS = "settings.json"
SAMPLES_TENSORS = "samples.safetensors"
INTERPOLATION_TENSORS = "interpolation.safetensors"
INTERPOLATION_GRID = "interpolation.png"
STEPS_FIGURE = "steps.png"

#: What each command writes (and so what its ``--overwrite`` may replace).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": (RECIPE, TRAIN_LOG, IMAGES, CHECKPOINTS),
    "sample": (SAMPLES,),
    "interpolate": (INTERPOLATION,),
    "evaluate": (METRICS,),
    "report": (REPORT, REPORT_ASSETS),
}

FORMAT = "aesampler-run"
VERSION = 1
_STAGING = ".aesampler-new-"
_BACKUP = ".aesampler-old-"
# Temporary names that carry the writing process's id: ``.name.tmp-PID`` (atomic writes),
# ``.tmp-step-NNNNNNNN-PID`` (checkpoints), staging and backup folders.
_TEMPORARY = re.compile(r"^(?:\..+\.tmp-|\.tmp-.+-|\.aesampler-(?:new|old)-.+-)(\d+)$")


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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


def read_json(path: Path, what: str) -> Any:
    """A JSON file aesampler wrote, or one clear error naming it when it is damaged."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{str(path)!r} does not exist ({what})") from None
    except OSError as error:
        raise RunDirError(f"cannot read {str(path)!r} ({what}): {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise RunDirError(
            f"{str(path)!r} ({what}) is not UTF-8 text (byte {error.start}): it was not written "
            "by aesampler, or it is damaged"
        ) from None
    except json.JSONDecodeError as error:
        raise RunDirError(
            f"{str(path)!r} ({what}) is not valid JSON (line {error.lineno}, column "
            f"{error.colno}: {error.msg}): it is damaged or was edited; re-create it with the "
            "command that wrote it"
        ) from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class RunDir:
    """One run directory: what aesampler wrote there, and safe ways to write more.

    Args:
        path: the directory (it need not exist yet).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

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

    def manifest(self) -> dict[str, Any]:
        """The manifest (an empty one when the directory has none yet)."""
        if not self.manifest_path.is_file():
            return {"format": FORMAT, "version": VERSION, "entries": {}, "pending": {}}
        document = read_json(self.manifest_path, "the run directory's manifest")
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise RunDirError(
                f"{str(self.manifest_path)!r} is not an aesampler run manifest (no format "
                f"{FORMAT!r}); aesampler will not write into {str(self.path)!r}"
            )
        if document.get("version") != VERSION:
            raise RunDirError(
                f"{str(self.manifest_path)!r} has manifest version {document.get('version')!r}; "
                f"this aesampler reads version {VERSION}"
            )
        document.setdefault("entries", {})
        document.setdefault("pending", {})
        return document

    def owned(self) -> dict[str, dict[str, Any]]:
        """Entry name -> what the manifest says about it (the command that wrote it, when)."""
        return dict(self.manifest()["entries"])

    def components(self) -> dict[str, dict[str, Any]]:
        """What provided each component the run used, as recorded: kind -> name -> provenance."""
        return dict(self.manifest().get("components", {}))

    # -- writing the manifest --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise manifest updates between processes writing into the same directory."""
        with open(self.path / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
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

    # -- opening ---------------------------------------------------------------------------

    def create(self) -> bool:
        """Make the directory and its manifest; True if this call created the directory.

        A directory that exists must be empty or already aesampler's; a run directory made by
        an aesampler without manifests (it has ``checkpoints/latest``) is adopted: its old files
        are not listed as aesampler's, so ``--overwrite`` will not replace them.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"the output directory {str(self.path)!r} is a file, not a folder")
        created = not self.path.exists()
        if not created and not self.is_aesampler() and not self.is_empty():
            self._refuse_foreign()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"cannot create the output directory {str(self.path)!r}: {error.strerror}"
            ) from None
        if not self.is_aesampler():
            self._update(lambda document: document.setdefault("created", _now()))
        return created

    def _refuse_foreign(self) -> None:
        """Raise unless the folder is aesampler's, or a run made before manifests existed."""
        if (self.path / CHECKPOINTS / "latest").is_file():
            return
        raise RunDirError(
            f"{str(self.path)!r} is not empty and was not made by aesampler (it holds no "
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
            raise RunDirError(f"the output directory {str(self.path)!r} is a file, not a folder")
        if not self.path.exists() or self.is_empty():
            return
        if not self.is_aesampler():
            self._refuse_foreign()
        owned = self.owned() if self.is_aesampler() else {}
        for entry in entries:
            target = self.path / entry
            if not (target.exists() or target.is_symlink()):
                continue
            if entry not in owned:
                raise RunDirError(
                    f"{str(target)!r} exists but the manifest {MANIFEST} does not list it as "
                    f"aesampler's output, so aesampler will not replace it; move it away, or "
                    "choose another output.dir (--out)"
                )
            if not overwrite and command == "train":
                raise RunDirError(
                    f"the run directory {str(self.path)!r} already exists; pass --resume to "
                    "continue that run, --overwrite to replace aesampler's outputs in it, or "
                    "choose another output.dir (--out)"
                )
            if not overwrite:
                raise RunDirError(
                    f"{str(target)!r} already exists; pass --overwrite to replace it (only "
                    f"{entry}), or choose another output.dir (--out)"
                )

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
        except BaseException:
            txn.rollback()
            raise
        txn.commit()

    def recover(self) -> list[str]:
        """Roll back transactions of processes that died; delete their temporary files.

        Returns a line per thing done. Every command calls this before it writes.
        """
        if not self.path.is_dir() or not self.is_aesampler():
            return []  # only a directory aesampler has marked as its own is ever tidied
        done: list[str] = []
        for txn_id, record in self.manifest()["pending"].items():
            if not _pid_alive(int(record.get("pid", -1))):
                done += Transaction.from_record(self, txn_id, record).rollback()
        # Temporary files of dead writers: at the top level, and inside aesampler's own entries.
        places = [self.path] + [
            self.path / entry for entry in self.owned() if (self.path / entry).is_dir()
        ]
        for place in places:
            for root, folders, files in os.walk(place):
                for name in [*folders, *files]:
                    match = _TEMPORARY.match(name)
                    if match and not _pid_alive(int(match.group(1))):
                        _remove(Path(root) / name)
                        done.append(f"removed {Path(root, name).relative_to(self.path)}")
                if Path(root) == self.path:
                    folders.clear()  # the top level only; owned entries are walked themselves
                else:
                    folders[:] = [f for f in folders if not _TEMPORARY.match(f)]
        return done


class Transaction:
    """An open replacement of some run-directory entries (see :meth:`RunDir.transaction`)."""

    def __init__(self, run_dir: RunDir, command: str, entries: list[str], replace: list[str]):
        unknown = [e for e in entries if e not in _ALL_ENTRIES]
        if unknown:
            raise ValueError(f"not run-directory entries: {unknown}")
        self.run_dir = run_dir
        self.command = command
        self.entries = entries
        self.replace = [e for e in replace if e not in entries]
        self.pid = os.getpid()
        self.id = f"{command}-{self.pid}-{time.monotonic_ns()}"
        self.backup = run_dir.path / f"{_BACKUP}{command}-{self.pid}"
        self.created_dir = False
        self.direct_entries: set[str] = set()
        self._open = False

    @classmethod
    def from_record(cls, run_dir: RunDir, txn_id: str, record: dict) -> Transaction:
        txn = cls(run_dir, record["command"], record["entries"], record.get("replace", []))
        txn.id, txn.pid = txn_id, int(record["pid"])
        txn.backup = run_dir.path / record["backup"]
        txn.created_dir = bool(record.get("created_dir"))
        txn.direct_entries = set(record.get("direct", []))
        txn._open = True
        return txn

    def _record(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "pid": self.pid,
            "started": _now(),
            "entries": self.entries,
            "replace": self.replace,
            "backup": self.backup.name,
            "created_dir": self.created_dir,
            "direct": sorted(self.direct_entries),
        }

    def _staging(self, entry: str) -> Path:
        return self.run_dir.path / f"{_STAGING}{entry}-{self.pid}"

    def begin(self) -> None:
        self.created_dir = self.run_dir.create()
        record = self._record()
        self.run_dir._update(lambda d: d["pending"].__setitem__(self.id, record))
        self._open = True

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
            self.direct_entries.add(entry)
            record = self._record()
            self.run_dir._update(lambda d: d["pending"].__setitem__(self.id, record))
            self._move_to_backup(entry)
        return self.run_dir.path / entry

    def _move_to_backup(self, entry: str) -> None:
        final = self.run_dir.path / entry
        if final.exists() or final.is_symlink():
            self.backup.mkdir(exist_ok=True)
            fault_point(f"back up {entry}")
            os.replace(final, self.backup / entry)

    def commit(self) -> None:
        """Swap the staged entries in, record them in the manifest, drop the backup."""
        if not self._open:
            return
        root = self.run_dir.path
        for entry in self.replace:
            self._move_to_backup(entry)
        for entry in self.entries:
            if entry in self.direct_entries:
                continue
            staged = self._staging(entry)
            if not (staged.exists() or staged.is_symlink()):
                continue  # nothing was written for it: the old one stays
            self._move_to_backup(entry)
            fault_point(f"swap in {entry}")
            os.replace(staged, root / entry)
        fsync_dir(root)
        written = [e for e in self.entries if (root / e).exists()]

        def change(document):
            for entry in self.replace:
                document["entries"].pop(entry, None)
            for entry in written:
                document["entries"][entry] = {"command": self.command, "written": _now()}
            document["pending"].pop(self.id, None)

        fault_point("commit manifest")
        self.run_dir._update(change)
        self._open = False
        if self.backup.exists():
            fault_point("drop backup")
            shutil.rmtree(self.backup)

    def rollback(self) -> list[str]:
        """Remove what this transaction wrote and put the old entries back."""
        if not self._open:
            return []
        root = self.run_dir.path
        done = []
        for entry in self.entries:
            staged = self._staging(entry)
            if staged.exists() or staged.is_symlink():
                _remove(staged)
            if entry in self.direct_entries and (root / entry).exists():
                _remove(root / entry)
                done.append(f"removed the unfinished {entry} of an interrupted {self.command}")
        if self.backup.is_dir():
            for old in self.backup.iterdir():
                if (root / old.name).exists():
                    _remove(root / old.name)
                os.replace(old, root / old.name)
                done.append(f"restored {old.name} from before an interrupted {self.command}")
            self.backup.rmdir()
        self._open = False
        manifest = self.run_dir.manifest()
        manifest["pending"].pop(self.id, None)
        leftover = [p for p in root.iterdir() if p.name not in (MANIFEST, LOCK)]
        if self.created_dir and not manifest["pending"] and not leftover:
            shutil.rmtree(root)  # it did not exist before this transaction: leave no trace
            done.append(f"removed {root}, made by an interrupted {self.command}")
        else:
            self.run_dir._update(lambda d: d["pending"].pop(self.id, None))
        return done


_ALL_ENTRIES = {entry for entries in OUTPUTS.values() for entry in entries}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
