"""Issue 17, items 2 and 6: forged open transactions, and the messages of a hostile review.

A pending transaction in the manifest is rolled back only as far as the manifest's own entries
and the transaction's own backup allow: its shape must be one aesampler writes for its command,
and anything it would remove must be what it wrote (not listed as an earlier output, nothing in
it older than the transaction's lock file). Anything else is refused with one message, and
nothing moves. The messages name the path of every OS error, say what a late failure had
already replaced, and quote file names with escapes.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from aesampler import rundir
from aesampler.checkpoint import find_checkpoint
from aesampler.rundir import MANIFEST, RunDir

from .conftest import cli
from .helpers import copy_run, crash_at


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (links not followed) and the bytes of its files, the
    manifest's lock file aside."""
    found: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.name == rundir.LOCK:
                continue
            key = str(path.relative_to(folder))
            found[key] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return found


def one_error_line(done) -> str:
    """The one line a refused command prints: exit 2, no traceback, a single line."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("aesampler: error: "), done.stderr
    return lines[0]


def forge(copy: Path, record: dict, *, lock: bool = True, txn_id: str = "forged") -> None:
    """Write ``record`` into the manifest's open transactions, as an attacker would."""
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["pending"][txn_id] = record
    (copy / MANIFEST).write_text(json.dumps(manifest))
    if lock:  # the lock file, so the record looks as complete as a real one
        time.sleep(0.05)  # the run was copied a moment ago: let its files be older than this
        (copy / record["lock"]).touch()


def record(command: str, entries: list[str], **fields) -> dict:
    return {
        "command": command,
        "pid": 4242,
        "entries": entries,
        "replace": [],
        "existed": [],
        "direct": [],
        "backup": f".aesampler-old-{command}-4242-1",
        "lock": f".aesampler-txn-{command}-4242-1.lock",
        "created_dir": False,
        "swapping": [],
        **fields,
    }


# ----------------------------------------------------------------------------------------------
# Item 2: forged open transactions


@pytest.mark.parametrize(
    "case",
    [
        # The record: a report that claims to have written report/ in place.
        {"fields": {"direct": ["report"]}, "lock": False, "why": "writes nothing in place"},
        {"fields": {"direct": ["report"]}, "lock": True, "why": "writes nothing in place"},
        # Well-formed: report/ swapped in by that transaction, says the record; but the
        # manifest lists report/ as an earlier output ...
        {"fields": {"swapping": ["report"]}, "lock": True, "why": "lists it as an output from"},
        # ... or report/ is the user's own, older than the record's lock file (or it has none).
        {"fields": {"swapping": ["report"]}, "lock": True, "why": "is older than", "own": 1},
        {
            "fields": {"swapping": ["report"]},
            "lock": False,
            "why": "lock file is missing",
            "own": 1,
        },
    ],
)
def test_a_forged_report_transaction_removes_nothing(case, tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    (copy / "report" / "notes.txt").write_text("mine")
    if case.get("own"):  # report/ wholly the user's: the manifest does not list it
        manifest = json.loads((copy / MANIFEST).read_text())
        del manifest["entries"]["report"]
        (copy / MANIFEST).write_text(json.dumps(manifest))
    forge(copy, record("report", ["report.html", "report"], **case["fields"]), lock=case["lock"])
    before = listing(copy)
    done = cli("evaluate", str(copy), "--overwrite", "--quiet", "evaluate.bootstrap=0")
    line = one_error_line(done)
    assert MANIFEST in line and case["why"] in line, line
    assert listing(copy) == before
    assert (copy / "report" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "entries",
    [
        ["checkpoints", "images", "metrics.jsonl"],
        ["recipe.yaml", "metrics.jsonl", "images", "checkpoints"],
    ],
)
def test_a_forged_train_transaction_keeps_the_trained_model(entries, tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    forged = record("train", entries, direct=["checkpoints", "images", "metrics.jsonl"])
    forge(copy, forged)
    before = listing(copy)
    for argv in (["sample", str(copy), "--overwrite", "--quiet"], ["report", str(copy)]):
        line = one_error_line(cli(*argv))
        assert MANIFEST in line, line
        assert listing(copy) == before
    assert find_checkpoint(copy).is_dir()
    if len(entries) == 4:  # well-formed: the manifest lists what it claims to have created
        assert "lists it as an output from before" in line


def test_a_forged_backup_folder_is_not_emptied(tiny_run, tmp_path):
    """A record whose backup folder holds what no transaction backed up moves nothing."""
    copy = copy_run(tiny_run, tmp_path)
    shutil.rmtree(copy / "samples")
    forged = record("sample", ["samples"], existed=["samples"])
    (copy / forged["backup"] / "thesis").mkdir(parents=True)
    (copy / forged["backup"] / "thesis" / "chapter1.tex").write_text("mine")
    (copy / forged["backup"] / "samples").mkdir()
    forge(copy, forged)
    before = listing(copy)
    line = one_error_line(cli("report", str(copy)))
    assert "thesis" in line and "not one of the sample's entries" in line
    assert listing(copy) == before


def _fault_labels(argv: list[str], monkeypatch) -> list[str]:
    """The labels of the disk changes a command makes, in order (counted in this process)."""
    labels = []
    monkeypatch.setattr(rundir, "fault_point", labels.append)
    assert cli(*argv).returncode == 0
    monkeypatch.undo()
    return labels


def test_a_genuine_interrupted_transaction_is_still_rolled_back(tiny_run, tmp_path, monkeypatch):
    # `sample --overwrite` killed after the new samples were swapped in, before it committed.
    copy = copy_run(tiny_run, tmp_path)
    old = listing(copy / "samples")
    argv = ["sample", str(copy), "--overwrite", "--quiet", "sampling.seed=9"]
    counted = copy_run(tiny_run, tmp_path, "counted")
    labels = _fault_labels([a.replace(str(copy), str(counted)) for a in argv], monkeypatch)
    point = labels.index("commit manifest") + 1
    assert crash_at(point, argv) == 137
    assert listing(copy / "samples") != old  # the new samples are in place, uncommitted
    assert RunDir(copy).manifest()["pending"]
    done = cli("report", str(copy))
    assert done.returncode == 0, done.stderr
    assert listing(copy / "samples") == old
    assert RunDir(copy).manifest()["pending"] == {}

    # A fresh `train` killed after it wrote in place (checkpoints/, images/, ...): the
    # directory it made is removed again.
    recipe = tmp_path / "fresh.yaml"
    recipe.write_text(tiny_run[0].read_text().replace("dir: unused", f"dir: {tmp_path / 'new'}"))
    labels = _fault_labels(["train", str(recipe), "--quiet"], monkeypatch)
    shutil.rmtree(tmp_path / "new")
    point = labels.index("commit manifest") + 1
    assert crash_at(point, ["train", str(recipe), "--quiet"]) == 137
    assert (tmp_path / "new" / "checkpoints").is_dir()
    assert RunDir(tmp_path / "new").recover()
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------------------
# Item 6: messages


def _full_disk_at(monkeypatch, when) -> list[Path]:
    """Make the write of a file for which ``when(path)`` holds fail as a full disk does: an
    OSError without a file name (write() and fsync() know none)."""
    real = rundir._write_file
    failed = []

    def write(path, data):
        if when(Path(path)):
            failed.append(Path(path))
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(rundir, "_write_file", write)
    return failed


def test_a_full_disk_names_the_path(tiny_run, tmp_path, monkeypatch):
    copy = copy_run(tiny_run, tmp_path)
    old = listing(copy / "samples")
    failed = _full_disk_at(monkeypatch, lambda path: path.name.startswith(".steps.png"))
    done = cli("sample", str(copy), "--overwrite", "--quiet", "sampling.seed=9")
    line = one_error_line(done)
    assert failed and "No space left on device" in line
    target = failed[0].with_name("steps.png")  # the file being written, not its temporary name
    assert f"cannot use {str(target)!r}" in line, line
    assert "written before this error" not in line  # nothing was replaced
    assert listing(copy / "samples") == old


def test_evaluate_says_what_it_replaced_before_a_late_failure(tiny_run, tmp_path, monkeypatch):
    copy = copy_run(tiny_run, tmp_path)
    metrics = (copy / "metrics.json").read_bytes()
    report = listing(copy / "report")
    # The disk fills up once metrics.json is replaced, while the report is redrawn.
    failed = _full_disk_at(monkeypatch, lambda path: ".aesampler-new-report" in str(path))
    done = cli(
        "evaluate", str(copy), "--overwrite", "--quiet", "evaluate.seed=9", "evaluate.bootstrap=0"
    )
    line = one_error_line(done)
    assert failed and "No space left on device" in line
    assert str(failed[0].parent).split(".aesampler-new-report")[0] in line
    assert (copy / "metrics.json").read_bytes() != metrics  # replaced, and the message says so
    assert line.endswith(
        f"; written before this error, complete and kept: {str(copy / 'metrics.json')!r}"
    ), line
    assert listing(copy / "report") == report
    assert RunDir(copy).manifest()["pending"] == {}


def test_a_linked_fitted_or_partial_folder_is_refused_for_the_link(tiny_run, tmp_path, monkeypatch):
    copy = copy_run(tiny_run, tmp_path)
    gmm = ["sampling.start.name=ex_post_gmm", "sampling.start.components=2"]
    done = cli("sample", str(copy), "--overwrite", "--quiet", *gmm)
    assert done.returncode == 0, done.stderr
    assert "fitted" in RunDir(copy).owned()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(copy / "fitted", elsewhere)
    os.symlink(elsewhere, copy / "fitted")
    from aesampler.samplers.gmm import ExPostGMM

    def no_fit(self, context):
        raise AssertionError("fitted before the link was refused")

    monkeypatch.setattr(ExPostGMM, "fit", no_fit)
    before = listing(copy)
    other = [*gmm, "sampling.start.components=3"]  # settings not fitted before: a new fit
    line = one_error_line(cli("sample", str(copy), "--overwrite", "--quiet", *other))
    assert "fitted' is a symbolic link" in line and "does not list" not in line, line
    assert listing(copy) == before

    # partial/, listed, then made a link: refused for the link before any chain runs.
    run = RunDir(copy)
    run.partial_folder("samples-0123456789ab")
    run.release_partial("samples-0123456789ab")
    assert "partial" in run.owned()
    shutil.move(copy / "partial", tmp_path / "partial-elsewhere")
    os.symlink(tmp_path / "partial-elsewhere", copy / "partial")
    before = listing(copy)
    argv = ["sample", str(copy), "--overwrite", "--quiet", "sampling.shard_size=5"]
    line = one_error_line(cli(*argv))
    assert "partial' is a symbolic link" in line and "does not list" not in line, line
    assert listing(copy) == before


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_malicious_state_file_gets_no_advice_to_load_it_unsafely(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    state = find_checkpoint(copy) / "state.pt"
    torch.save({"x": _Evil()}, state, pickle_module=pickle)
    line = one_error_line(cli("train", str(copy), "--resume", "--quiet", "train.max_steps=4"))
    assert "state.pt" in line and "never runs code" in line
    assert "it names posix.system" in line  # what was refused
    assert "will likely succeed" not in line and "Re-running" not in line
    assert "trusted source" not in line and "add_safe_globals" not in line


def test_names_with_a_line_break_or_undecodable_bytes_are_quoted(tiny_run, tmp_path):
    odd = os.fsdecode(b"run\nx-\xff")
    copy = copy_run(tiny_run, tmp_path, odd)
    (find_checkpoint(copy) / "model.json").write_text("{")
    line = one_error_line(cli("sample", str(copy), "--quiet"))
    assert "run\\nx-\\xff" in line and "not valid JSON" in line, line

    # An image that fails to decode during training, named with both.
    data = tmp_path / "images"
    for split, count in (("train", 8), ("valid", 2), ("test", 2)):
        (data / split).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), 20 * i).save(data / split / f"{i:03d}.png")
    bad = data / "train" / os.fsdecode(b"bad\nname-\xfe.png")
    Image.effect_noise((32, 32), 50).save(bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the header is whole
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(
        "model: {name: vae, latent_dim: 4, width: 4}\n"
        f"data: {{name: image_folder, root: {data}, image_size: 8, channels: 1}}\n"
        "train: {epochs: 1, batch_size: 4, grid_size: 4}\n"
        f"output: {{dir: {tmp_path / 'trained'}}}\n"
    )
    line = one_error_line(cli("train", str(recipe), "--quiet"))
    assert "bad\\nname-\\xfe.png" in line, line


def test_every_message_naming_a_path_escapes_an_undecodable_byte(tmp_path):
    """Messages built with ``quoted`` everywhere: a byte that is not UTF-8 shows as ``\\xff``,
    never as Python's surrogate escape ``\\udcff`` (here: report and compare)."""
    odd = tmp_path / os.fsdecode(b"not-a-run-\xff")
    odd.mkdir()
    (odd / "notes.txt").write_text("mine")
    for argv in (
        ("report", str(odd)),
        ("compare", str(odd), str(odd), "--out", str(tmp_path / "out")),
    ):
        line = one_error_line(cli(*argv))
        assert "not-a-run-\\xff" in line and "udcff" not in line, (argv, line)


@pytest.mark.parametrize("content", ["padding", "nesting"])
def test_a_huge_manifest_is_refused_at_once(content, tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    if content == "padding":  # 21 MB of plausible component records
        manifest["components"]["metric"] = {
            f"m{i:08d}": {"distribution": "x", "version": "1", "plugin": "p"}
            for i in range(21 * 10**6 // 60)
        }
        text = json.dumps(manifest)
    else:  # small, but nested too deep for the JSON reader
        text = "[" * 100_000 + "]" * 100_000
    (copy / MANIFEST).write_text(text)
    before = listing(copy)
    line = one_error_line(cli("sample", str(copy), "--overwrite", "--quiet"))
    assert MANIFEST in line
    assert ("larger than 256 KiB" if content == "padding" else "nests too deeply") in line
    assert listing(copy) == before
