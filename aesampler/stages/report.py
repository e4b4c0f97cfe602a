"""The report stage: ``report.html`` from whatever the run directory holds, after every command."""

from __future__ import annotations

from pathlib import Path

from .base import Stage, StageContext


def _run(ctx: StageContext) -> Path:
    from ..report import write_report  # matplotlib is imported only when pictures are made

    return write_report(ctx.path)


STAGE = Stage("report", _run)
