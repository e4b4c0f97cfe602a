"""The ``aesampler`` command line.

User mistakes print one line, ``aesampler: error: ...``, and exit with status 2; ``--traceback``
shows the stack instead. Under torchrun (``torchrun --nproc-per-node=N -m aesampler ...``) every
process joins the run's process group first, and an error names the process that met it:
``aesampler: error on rank 1 of 2: ...``, and leaves it in torchrun's error file; torchrun then
stops the others and exits non-zero (``python -m aesampler.launch``, torchrun for aesampler, ends
with that line instead of torchrun's traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import distributed
from .errors import AesamplerError, printable, quoted
from .plugins import get_registry
from .rundir import RECIPE, RunDir, recording_commits
from .version import __version__


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
            "disabled": [
                {"plugin": d.plugin, "distribution": d.distribution, "reason": d.reason}
                for d in registry.disabled
            ],
        }
        print(json.dumps(payload, indent=2))
    else:
        rows = [("KIND", "NAME", "DISTRIBUTION", "DESCRIPTION")]
        rows += [(c.kind, c.name, c.distribution, c.description) for c in components]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    for disabled in registry.disabled:
        print(f"aesampler: switched off {disabled}", file=sys.stderr)
    for failure in registry.failures:
        print(f"aesampler: broken {failure}", file=sys.stderr)
    return 1 if registry.failures else 0


def _load(args: argparse.Namespace):
    from .recipe import load_recipe

    overrides = list(args.overrides)
    provided_before = None
    if Path(args.recipe).is_dir():  # a run directory: its resolved recipe, writing into it
        run = RunDir(args.recipe)
        overrides.insert(0, f"output.dir={args.recipe}")
        args.recipe = str(run / RECIPE)
        if run.is_aesampler():  # what provided its components, should one be missing now
            provided_before = run.components()
    if getattr(args, "out", None):
        overrides.append(f"output.dir={args.out}")
    return load_recipe(args.recipe, overrides, provided_before=provided_before)


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    recipe = _load(args)
    result = train(recipe, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if not distributed.world().is_main:
        return 0  # rank 0 speaks for the run
    losses = ", ".join(f"{k}={v:.4g}" for k, v in result.last_losses.items())
    print(
        f"trained {recipe.model.name} for {result.steps} steps ({result.epochs_completed} epochs) "
        f"in {result.seconds:.1f}s; last losses: {losses or 'none'}; "
        f"checkpoint: {result.checkpoint}"
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    recipe = _load(args)
    print(f"{args.recipe}: valid (model {recipe.model.name}, data {recipe.data.name})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .workflow import checkpoint_for, run

    recipe = _load(args)
    kind = args.command
    checkpoint = None
    if kind != "run":  # sample, interpolate, inpaint, evaluate and compare-samplers never train
        checkpoint = checkpoint_for(recipe, args.checkpoint)
    result = run(
        recipe,
        resume=getattr(args, "resume", False),
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=kind,  # its stages: aesampler.stages.stages_for
        checkpoint=checkpoint,
    )
    if not distributed.world().is_main:
        return 0  # rank 0 speaks for the run
    if result.metrics is not None:
        from .evaluation import describe_best_steps, format_table

        print(format_table(result.metrics))
        print("\n".join(describe_best_steps(result.metrics)))
    if result.comparison is not None:
        from .comparison import format_comparison

        print(format_comparison(result.comparison))
    if result.tuning is not None:
        from .tuning import format_tuning

        print(format_tuning(result.tuning))
    trained = f"trained {result.trained_steps} steps, " if result.trained_steps is not None else ""
    print(
        f"{kind} finished in {result.seconds:.1f}s ({trained}outputs in {result.run_dir}); "
        f"report: {result.report}"
    )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare_runs

    text = compare_runs(
        [Path(d) for d in args.run_dirs],
        Path(args.out) if args.out else None,
        overwrite=args.overwrite,
    )
    print(text)
    return 0


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import bench, format_bench
    from .rundir import write_json

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise AesamplerError(
            f"--device {args.device!r} is not a device (cpu, cuda or cuda:N)"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise AesamplerError(f"--device {args.device!r}: aesampler bench runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AesamplerError(f"--device {args.device!r}: no CUDA device is available here")
    result = bench(
        training=args.train,
        full=args.full,
        batches=None if args.batch is None else tuple(args.batch),
        steps=args.steps,
        repeats=args.repeats,
        networks=tuple(args.network),
        device=args.device,
        log=(lambda _: None) if args.quiet else print,
    )
    print(format_bench(result))
    if args.json:
        write_json(Path(args.json), result)
        print(f"bench: wrote {args.json}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise AesamplerError(f"{quoted(run_dir)} is not a run directory")
    print(f"report: {write_report(run_dir)}")
    return 0


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the YAML recipe, or a run directory (its recipe.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="override recipe keys"
    )
    parser.add_argument("--out", metavar="DIR", help="the run directory (same as output.dir=DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aesampler",
        description="Better samples from generative autoencoders with Markov chains.",
    )
    parser.add_argument("--version", action="version", version=f"aesampler {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full stack when an error occurs"
    )
    parser.add_argument(
        "--no-plugins",
        action="store_true",
        help="load only aesampler's own built-in components, no third-party plugins",
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

    train = sub.add_parser(
        "train",
        help="train the recipe's model",
        description="Train the recipe's model. Writes the resolved recipe, metrics.jsonl, image "
        "grids and checkpoints into the run directory (output.dir).",
    )
    run = sub.add_parser(
        "run",
        help="train (or load) a model, run chains, interpolate, evaluate, write a report",
        description="Train the recipe's model (or load model.checkpoint), run sampling.num_chains "
        "chains, interpolate between test images, measure sample quality at every evaluated "
        "step, and write report.html in the run directory.",
    )
    for command, handler in ((train, _cmd_train), (run, _cmd_run)):
        _add_recipe_arguments(command)
        command.add_argument("--resume", action="store_true", help="continue the run in output.dir")
        command.add_argument(
            "--overwrite",
            action="store_true",
            help="replace aesampler's outputs in an existing run directory (never other files)",
        )
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        command.set_defaults(handler=handler)

    for name, what in (
        ("sample", "run chains from sampling.start (default: the prior)"),
        ("interpolate", "interpolate"),
        ("inpaint", "fill in the part of test images that inpaint.mask hides"),
        ("evaluate", "measure sample quality at every evaluated chain step"),
        (
            "compare-samplers",
            "fit every sampler of samplers.compare and measure each alone and with chain steps",
        ),
        (
            "tune",
            "choose the start sampler, batch-norm mode, chain corruption and steps on the "
            "validation split (what sampling.start: auto samples with)",
        ),
    ):
        command = sub.add_parser(
            name,
            help=f"{what} with a trained model (no training) and update the report",
            description=f"{what.capitalize()} with a trained model: --checkpoint, else "
            "model.checkpoint, else the checkpoint in output.dir. Writes into output.dir.",
        )
        _add_recipe_arguments(command)
        command.add_argument("--checkpoint", metavar="PATH", help="a run directory or checkpoint")
        command.add_argument(
            "--overwrite",
            action="store_true",
            help=f"replace this command's earlier outputs (only those: {name} keeps the rest)",
        )
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        command.set_defaults(handler=_cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check a recipe and exit (0: valid, 2: every problem listed)",
        description="Validate a recipe with its overrides, without doing any work.",
    )
    _add_recipe_arguments(validate)
    validate.set_defaults(handler=_cmd_validate)

    compare = sub.add_parser(
        "compare",
        help="put the metrics of several runs side by side",
        description="Read metrics.json of each run directory; print one table per metric (rows: "
        "steps, columns: runs) and write compare.md and compare.png into --out (files of those "
        "names already there are replaced only with --overwrite).",
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", metavar="DIR", help="where compare.md and compare.png go")
    compare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace compare.md and compare.png if --out already holds them",
    )
    compare.set_defaults(handler=_cmd_compare)

    bench = sub.add_parser(
        "bench",
        help="time the chain against a bare PyTorch loop: exact, auto and bf16",
        description="Time Chain.run (exact fp32, the default precision auto, and bf16) against "
        "a bare eager loop over the same networks, interleaved in one process; print the CPU "
        "capability, what precision auto chooses here and why, and a table of images per "
        "second, ratios to the bare loop and fractions of the matmul peak. The defaults answer "
        "in about a minute on 2 cores; --full times more batches and steps, and bf16 even "
        "where the hardware has no fast bf16.",
    )
    bench.add_argument(
        "--full",
        action="store_true",
        help="the longer table: batches 64 and 256, 5 chain steps, and bf16 timed everywhere",
    )
    bench.add_argument(
        "--batch", type=_positive, nargs="+", default=None, metavar="N", help="default: 64"
    )
    bench.add_argument(
        "--steps", type=_positive, default=None, help="chain steps per timed run (default 5)"
    )
    bench.add_argument(
        "--repeats", type=_positive, default=None, help="interleaved rounds (median; default 5)"
    )
    bench.add_argument(
        "--network",
        nargs="+",
        default=["quickstart", "paper"],
        choices=["quickstart", "paper"],
        help="quickstart: 32x32, 1 channel, width 32; paper: 64x64, 3 channels, width 64",
    )
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    bench.add_argument(
        "--train",
        action="store_true",
        help="also time training against a bare fp32 training loop: a quickstart epoch of "
        "aesampler train (fp32 and train.precision bf16, on the embedded mnist5k digits) and "
        "steps of the chosen networks' bare loops in bf16 and bf16 with channels-last",
    )
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--quiet", action="store_true", help="only the table")
    bench.set_defaults(handler=_cmd_bench)

    report = sub.add_parser("report", help="(re)write report.html for a run directory")
    report.add_argument("run_dir", help="the run directory")
    report.set_defaults(handler=_cmd_report)
    return parser


#: The commands that run under torchrun: every process takes its part of the work.
DISTRIBUTED_COMMANDS = frozenset({"train", "sample", "evaluate", "run", "validate", "plugins"})


def format_warning(message, category, filename, lineno, line=None) -> str:
    """aesampler's own warnings as one line each (``aesampler: warning: ...``); others as
    Python formats them."""
    if category.__module__.startswith("aesampler"):
        return f"aesampler: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    # Only the format changes: whoever records warnings (pytest.warns, a caller's
    # catch_warnings(record=True)) still receives them.
    previous, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    # Overrides may stand anywhere, also after options: `run R --quiet train.epochs=2`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .plugins import set_builtins_only

    set_builtins_only(args.no_plugins)  # before the handler first asks for the registry
    where = ""  # which process failed, under torchrun
    written: list[Path] = []  # outputs replaced before an error: the message names them

    def fail(message: str, status: int = 2, *, follows_another_rank: bool = False) -> int:
        """Print the one line of an error; under torchrun, leave it for the launcher too."""
        if written:
            message += "; written before this error, complete and kept: " + ", ".join(
                quoted(path) for path in written
            )
        line = printable(f"aesampler: error{where}: {message}")
        print(line, file=sys.stderr)
        if where:
            distributed.record_failure(line, status, follows_another_rank=follows_another_rank)
        return status

    try:
        world = distributed.world()
        if world.enabled:
            where = f" on {world}"
            if args.command not in DISTRIBUTED_COMMANDS:
                raise distributed.DistributedError(
                    f"aesampler {args.command} does not run under torchrun yet; run it as one "
                    f"process (torchrun runs: {', '.join(sorted(DISTRIBUTED_COMMANDS))})"
                )
            distributed.setup(distributed.default_device())
        with recording_commits(written):
            code = args.handler(args)
        if code == 0:
            distributed.finish()  # the ranks leave together
        return code
    except AesamplerError as error:
        if args.traceback:
            raise
        follows = isinstance(error, distributed.OtherRankFailedError)
        return fail(str(error), follows_another_rank=follows)
    except OSError as error:  # a path that is a file, read-only, on a full disk, ...
        if args.traceback:
            raise
        reason = error.strerror or str(error)
        if error.filename is None:  # aesampler names its own paths (rundir.naming)
            return fail(f"cannot read or write a file: {reason}")
        also = f" and {quoted(error.filename2)}" if error.filename2 is not None else ""
        return fail(f"cannot use {quoted(error.filename)}{also}: {reason}")
    except MemoryError:
        if args.traceback:
            raise
        return fail(
            "out of memory; lower the sizes in the recipe (num_chains, chunk_size, batch_size, "
            "image_size, latent_dim)"
        )
    except Exception as error:  # a bug, here or in a plugin: the stack, and which rank met it
        if args.traceback or not where:
            raise
        lost = distributed.lost_peer(error)
        if lost is not None:  # a peer vanished: another rank failed
            return fail(
                f"lost contact with the other ranks ({lost}); the rank that failed first says why",
                follows_another_rank=True,
            )
        traceback.print_exc()
        return fail(f"{type(error).__name__}: {error}", 1)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
