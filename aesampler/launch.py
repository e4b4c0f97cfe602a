"""``python -m aesampler.launch``: torchrun for aesampler, whose failures end with one line.

    python -m aesampler.launch [TORCHRUN OPTIONS] COMMAND [ARGS ...]

runs ``torchrun [TORCHRUN OPTIONS] -m aesampler COMMAND [ARGS ...]`` through torchrun's own code
(``torch.distributed.run``): the same options, rendezvous, processes and log lines. Only the end
of a failed run differs. torchrun ends it with the traceback of its ``ChildFailedError`` and a
table of the failed ranks; this launcher ends it with one line and the failed rank's exit status:

* a rank killed by a signal torchrun does not send (SIGKILL, for example from the out-of-memory
  killer, or SIGSEGV) is the cause: ``aesampler: error: rank 1 was killed by SIGKILL, ...``;
* otherwise the line of the first rank that failed for a reason of its own
  (``aesampler: error on rank 1 of 2: ...``; each rank leaves it in torchrun's error file, see
  :func:`aesampler.distributed.record_failure`). A rank whose error only says that another one
  failed first (``lost contact with the other ranks``) gives way to that other rank.

The exit status is the one the failed rank gave with its line (2 for an aesampler error, 1 for a
bug; torchrun may have stopped that rank with SIGTERM while it was leaving), or 128 + the
signal's number for a rank killed without a line, as a shell reports it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any

USAGE_NOTE = (
    "python -m aesampler.launch [TORCHRUN OPTIONS] COMMAND [ARGS ...] runs "
    "torchrun [TORCHRUN OPTIONS] -m aesampler COMMAND [ARGS ...]"
)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe(failures: dict[int, Any]) -> tuple[str, int]:
    """The one line and the exit status for torchrun's failed ranks (rank -> ProcessFailure).

    Which rank speaks, in this order: one killed without a line by a signal torchrun does not
    send (SIGKILL from outside, SIGSEGV, ...: the others' errors follow from it); one that
    failed for a reason of its own and said so; one whose line only says that another rank
    failed first (``lost contact``); any other (stopped by torchrun's SIGTERM, or gone without
    a line). Among equals the first to fail: by the time the rank recorded, else the time
    torchrun saw it.
    """

    def details(failure) -> dict[str, Any]:
        data = getattr(failure, "error_file_data", None)
        mine = data.get("aesampler") if isinstance(data, dict) else None
        return mine if isinstance(mine, dict) else {}

    def said(failure) -> bool:
        mine = details(failure)
        line, status = mine.get("line"), mine.get("status")
        return isinstance(line, str) and bool(line) and isinstance(status, int) and status > 0

    def order(rank: int) -> tuple[int, float, int]:
        failure = failures[rank]
        mine = details(failure)
        if said(failure):
            kind = 2 if mine.get("follows_another_rank") else 1
        elif failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM:
            kind = 0
        else:
            kind = 3
        return kind, float(mine.get("time", failure.timestamp)), rank

    rank = min(failures, key=order)
    failure = failures[rank]
    if said(failure):  # the rank's own word (torchrun may have stopped it after it)
        return details(failure)["line"], details(failure)["status"]
    code = failure.exitcode
    if code < 0:  # killed by a signal: it could leave no line
        name = _signal_name(-code)
        why = ", which the system's out-of-memory killer also sends" if name == "SIGKILL" else ""
        text = (
            f"aesampler: error: rank {rank} was killed by {name}{why}; torchrun stopped the others"
        )
        return text, 128 - code
    return (
        f"aesampler: error: rank {rank} exited with status {code} without an aesampler error "
        "line (see its output above); torchrun stopped the others",
        code or 1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = torchrun.parse_args(argv)
    if args.module or args.no_python:
        print(
            f"aesampler: error: --module and --no-python do not apply here: {USAGE_NOTE}",
            file=sys.stderr,
        )
        return 2
    # torchrun's parser took the aesampler command for the script to run.
    args.training_script_args = [args.training_script, *args.training_script_args]
    args.training_script, args.module = "aesampler", True
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        line, code = describe(error.failures)
        print(line, file=sys.stderr)
        return code
    except RendezvousError as error:
        print(f"aesampler: error: torchrun could not start the processes: {error}", file=sys.stderr)
        return 2
    except SignalException as error:  # Ctrl-C, or the launcher itself was told to stop
        name = _signal_name(int(error.sigval))
        print(f"aesampler: stopped by {name}; torchrun stopped the ranks", file=sys.stderr)
        return 128 + int(error.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
