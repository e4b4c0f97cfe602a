"""The ``aesampler`` command line.

User mistakes print one line, ``aesampler: error: ...``, and exit with status 2; ``--traceback``
shows the stack instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .errors import AesamplerError
from .plugins import get_registry


def _cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    components = list(registry)
    if args.json:
        payload = {
            "components": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "distribution": c.distribution,
                    "plugin": c.plugin,
                    "description": c.description,
                    "parameters": [p for p in c.parameters()],
                }
                for c in components
            ],
            "failures": [
                {"plugin": f.plugin, "distribution": f.distribution, "message": f.message}
                for f in registry.failures
            ],
        }
        print(json.dumps(payload, indent=2))
    else:
        rows = [("KIND", "NAME", "DISTRIBUTION", "DESCRIPTION")]
        rows += [(c.kind, c.name, c.distribution, c.description) for c in components]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    for failure in registry.failures:
        print(f"aesampler: broken {failure}", file=sys.stderr)
    return 1 if registry.failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aesampler",
        description="Better samples from generative autoencoders with Markov chains.",
    )
    parser.add_argument("--version", action="version", version=f"aesampler {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full stack when an error occurs"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    plugins = sub.add_parser(
        "plugins",
        help="list every registered component by kind, name and distribution",
        description="List every registered component by kind, name and providing distribution. "
        "Exits with status 1 if a plugin failed to load.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plugins.set_defaults(handler=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except AesamplerError as error:
        if args.traceback:
            raise
        print(f"aesampler: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
