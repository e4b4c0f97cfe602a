"""``aesampler bench``: how fast the chain runs here, against the loop a user would write.

For each network size and batch, in one process and with the variants interleaved (so that the
machine's load hits all of them alike), it times:

* ``reference``: a bare eager loop over the same networks, ``x = d(z); z ~ Q(z | x + noise)``,
  then the samples ``d(z_T)``, batch-statistics BN, the default memory layout, fp32;
* ``exact``: :meth:`aesampler.Chain.run` with ``precision="fp32"``;
* ``auto``: ``Chain.run()`` with its default, ``precision="auto"``: what a user gets (bf16 where
  the hardware computes it fast, fp32 elsewhere; :mod:`aesampler.precision`);
* ``bf16``: ``Chain.run(precision="bf16")``: bfloat16 autocast, the weights in channels-last
  layout for the run. On hardware without fast bfloat16 it is not timed by default (it can take
  over ten times as long as fp32 there), and its row says so; ``full=True`` times it anyway.

Each variant's images per second is the median over ``repeats`` rounds; its ratio to the
reference is taken round by round (both measured moments apart) and the median reported. The
floating-point operations of a run are counted with ``torch.utils.flop_counter``, and
the machine's matrix-multiply throughput (fp32 and bf16) is measured the same way, so each
variant also reports the fraction of that peak it reaches. Peak memory is measured on CUDA
(``torch.cuda.max_memory_allocated``); on the CPU it is not available per variant and reported
as null.

The sizes are the paper's 64 × 64 DCGAN networks (3 channels, latent 200, width 64) and the
quickstart's 32 × 32 ones (1 channel, latent 200, width 32), with fresh random weights: speed
does not depend on what the weights learned. The defaults (:data:`QUICK`: batch 64, 5 chain
steps, 5 rounds) answer in under a minute on 2 CPU cores; :data:`FULL` is the longer table.

With ``training=True`` it also times training (:func:`bench_training`): the variants of
:data:`TRAIN_VARIANTS` (``aesampler train`` and the bare loop, fp32 and ``train.precision:
bf16``, and bf16 with channels-last) against the bare fp32 training loop.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from .chain import Chain
from .corruptions import GaussianCorruption
from .models import AAE
from .plugins import get_registry
from .precision import SlowPrecisionWarning, autocast_dtype, cpu_capability, resolve_precision
from .recipe import build_corruption, build_dataset, build_model
from .recipe.loader import validate
from .training import train

#: (name, image size, channels, width) of the networks benchmarked.
NETWORKS = (("quickstart", 32, 1, 32), ("paper", 64, 3, 64))
VARIANTS = ("reference", "exact", "auto", "bf16")
#: The default batches, chain steps and rounds (about a minute on 2 CPU cores), and ``--full``'s.
QUICK = {"batches": (64,), "steps": 5, "repeats": 5}
FULL = {"batches": (64, 256), "steps": 5, "repeats": 5}


@dataclass
class Row:
    """One variant at one size and batch (the JSON's fields)."""

    name: str
    network: str
    image_size: int
    batch: int
    images_per_s: float
    ratio_to_reference: float
    peak_memory_bytes: int | None
    fraction_of_matmul_peak: float | None
    precision: str = "fp32"
    cpu_capability: str = ""
    note: str | None = None


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 1024, repeats: int = 5):
    """FLOP/s of a square matrix product in ``dtype``: the machine's practical peak."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm up
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / min(times)  # the fastest: other load only ever slows a product down


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops(model: AAE, batch: int, steps: int, device: torch.device) -> int:
    """Floating-point operations of a whole run: ``steps`` decodes and encodes, one decode.

    Counted on 2 chains and scaled: the counter counts the matrix products and convolutions,
    whose operations grow exactly in proportion to the batch.
    """
    from torch.utils.flop_counter import FlopCounterMode

    z0 = torch.randn(2, 200, generator=torch.Generator().manual_seed(1)).to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        _reference(copy.deepcopy(model), z0, steps, 0.5, 0)
    return counter.get_total_flops() * batch // 2


def _reference(
    model: AAE, z0: torch.Tensor, steps: int, sigma: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop a user would write: eager, fp32, batch statistics, default layout.

    Returns z_T and the samples x_T = d(z_T), as ``Chain.run(record=[steps])`` does.
    """
    generator = torch.Generator(z0.device).manual_seed(seed)
    model.train()  # batch statistics (the copy's running statistics may change: it is a copy)
    with torch.inference_mode():
        z = z0
        for _ in range(steps):
            x = model.decoder(z)
            noisy = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
            z = model.encoder(noisy).sample(generator)
        return z, model.decoder(z)


def _variants(model: AAE, steps: int, sigma: float, timed: tuple[str, ...]) -> dict[str, Callable]:
    corruption = GaussianCorruption(sigma)
    chain = Chain(model.encoder, model.decoder, corruption)
    reference = copy.deepcopy(model)

    def run(precision: str) -> Callable:
        def timed_run(z0):
            with warnings.catch_warnings():  # the row's note says when bf16 is slow here
                warnings.simplefilter("ignore", SlowPrecisionWarning)
                return chain.run(z0, steps=steps, record=[steps], seed=0, precision=precision)

        return timed_run

    every = {
        "reference": lambda z0: _reference(reference, z0, steps, sigma, 0),
        "exact": run("fp32"),
        "auto": run("auto"),
        "bf16": run("bf16"),
    }
    return {name: every[name] for name in timed}


def matmul_peaks(device: torch.device) -> dict[str, float]:
    """:func:`matmul_peak` of each computed precision on ``device``."""
    return {
        "fp32": matmul_peak(device, torch.float32),
        "bf16": matmul_peak(device, autocast_dtype(device)),
    }


def bench(
    *,
    training: bool = False,
    full: bool = False,
    batches: tuple[int, ...] | None = None,
    steps: int | None = None,
    repeats: int | None = None,
    networks: tuple[str, ...] = ("quickstart", "paper"),
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Time the chain's variants (and training's); returns the rows and the matmul peaks.

    ``batches``, ``steps`` and ``repeats`` default to :data:`QUICK`, or :data:`FULL` with
    ``full``. Without ``full``, ``bf16`` is not timed where the device has no fast bfloat16.
    """
    device = torch.device(device)
    defaults = FULL if full else QUICK
    batches = tuple(batches or defaults["batches"])
    steps = steps or defaults["steps"]
    repeats = repeats or defaults["repeats"]
    capability = cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name(device)
    auto = resolve_precision(device, "auto")
    log(f"bench: {device}, CPU capability {cpu_capability()}; {auto.describe()}")
    peaks = matmul_peaks(device)
    skip_bf16 = not auto.fast_bf16 and not full
    timed = tuple(v for v in VARIANTS if not (v == "bf16" and skip_bf16))
    notes = dict.fromkeys(VARIANTS)
    if not auto.fast_bf16:
        slow = f"no fast bf16 here: {auto.reason}"
        notes["bf16"] = f"not timed ({slow}; --full times it)" if skip_bf16 else slow
    table = _RowMaker(
        steps=steps,
        computes={"reference": "fp32", "exact": "fp32", "auto": auto.precision, "bf16": "bf16"},
        peaks=peaks,
        notes=notes,
        capability=capability,
    )
    rows: list[Row] = []
    for name, size, channels, width in NETWORKS:
        if name not in networks:
            continue
        torch.manual_seed(0)
        model = AAE(image_size=size, channels=channels, latent_dim=200, width=width).to(device)
        model.eval()
        variants = _variants(model, steps, sigma=0.5, timed=timed)
        for batch in batches:
            started_row = time.perf_counter()
            z0 = torch.randn(batch, 200, generator=torch.Generator().manual_seed(1)).to(device)
            flops = _flops(model, batch, steps, device)
            seconds, memory = _time_variants(variants, z0, repeats, device)
            found = table.rows(name, size, batch, flops, seconds, memory)
            rows += found
            said = ", ".join(
                f"{r.name} {r.ratio_to_reference:.2f}x" for r in found if r.ratio_to_reference
            )
            took = time.perf_counter() - started_row
            log(f"bench: {name} {size}x{size}, batch {batch} ({took:.0f}s): {said}")
    if training:
        found = bench_training(
            repeats=repeats, networks=networks, device=device, peaks=peaks, log=log
        )
        for row in found:
            slow = row["precision"] == "bf16" and not auto.fast_bf16
            note = f"no fast bf16 here: {auto.reason}" if slow else None
            rows.append(Row(**{**row, "cpu_capability": capability, "note": note}))
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_capability": cpu_capability(),
        "auto_precision": auto.as_dict(),
        "steps": steps,
        "repeats": repeats,
        "matmul_peak_flops": peaks,
        "rows": [asdict(row) for row in rows],
    }


def _time_variants(
    variants: dict[str, Callable[[torch.Tensor], object]],
    z0: torch.Tensor,
    repeats: int,
    device: torch.device,
) -> tuple[dict[str, list[float]], dict[str, int | None]]:
    """Each variant's seconds per round, and its peak memory on CUDA (None elsewhere).

    Variants are interleaved round by round, so a slow phase of the shared machine hits all of
    them alike; a first call of each warms up.
    """
    for run in variants.values():  # warm up: first calls allocate and pick kernels
        run(z0)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    memory: dict[str, int | None] = dict.fromkeys(variants)
    for _ in range(repeats):
        for variant, run in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            started = time.perf_counter()
            run(z0)
            _sync(device)
            seconds[variant].append(time.perf_counter() - started)
            if device.type == "cuda":
                memory[variant] = torch.cuda.max_memory_allocated(device)
    return seconds, memory


@dataclass(frozen=True)
class _RowMaker:
    """The rows of one network and batch from the variants' times: what every row shares."""

    steps: int
    computes: dict[str, str]
    peaks: dict[str, float]
    notes: dict[str, str | None]
    capability: str

    def rows(
        self,
        name: str,
        size: int,
        batch: int,
        flops: float,
        seconds: dict[str, list[float]],
        memory: dict[str, int | None],
    ) -> list[Row]:
        found = []
        for variant in VARIANTS:
            common = dict(precision=self.computes[variant], cpu_capability=self.capability)
            if variant not in seconds:
                row = Row(variant, name, size, batch, None, None, None, None, **common)
                found.append(Row(**{**asdict(row), "note": self.notes[variant]}))
                continue
            ratios = [r / s for r, s in zip(seconds["reference"], seconds[variant])]
            median = statistics.median(seconds[variant])
            peak = self.peaks[self.computes[variant]]
            found.append(
                Row(
                    variant,
                    name,
                    size,
                    batch,
                    batch * self.steps / median,
                    statistics.median(ratios),
                    memory[variant],
                    flops / median / peak if peak else None,
                    note=self.notes[variant],
                    **common,
                )
            )
        return found


#: The training benchmark's recipe: the quickstart's model, data and optimiser (one epoch).
TRAIN_RECIPE = {
    "model": {"name": "aae", "latent_dim": 200, "width": 32},
    "data": {"name": "mnist5k", "image_size": 32},
    "corruption": {"name": "gaussian", "sigma": 0.5},
    "train": {"epochs": 1, "batch_size": 64, "lr": 2e-4, "betas": [0.5, 0.999], "seed": 0},
}
#: Training steps timed per round on the paper's 64 × 64 networks (synthetic images).
PAPER_TRAIN_STEPS = 3
#: The training variants: (row name, whose loop, train.precision, channels-last), the first
#: being the reference. The bare loops run the model's own ``training_step`` and nothing else;
#: ``aesampler train`` needs a dataset, so it is timed on the quickstart only.
TRAIN_VARIANTS = (
    ("train: bare loop", "bare", "fp32", False),
    ("train: aesampler train", "aesampler", "fp32", False),
    ("train: bare loop bf16", "bare", "bf16", False),
    ("train: aesampler train bf16", "aesampler", "bf16", False),
    ("train: bare loop bf16+channels_last", "bare", "bf16", True),
)


class _BareTraining:
    """The loop a user would write around the model's ``training_step``, fp32 weights.

    ``precision`` is the model's ``train_precision`` (bf16 autocast of its forward passes);
    with ``channels_last`` the weights and the images are in channels-last memory layout.
    """

    def __init__(self, recipe, registry, device, precision: str, channels_last: bool, data=None):

        cfg = recipe.train
        torch.manual_seed(cfg.seed)
        self.model = build_model(recipe, data, registry).to(device)
        self.model.train_precision = precision
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.layout)
        self.corruption = build_corruption(recipe, registry)
        self.optimizers = {
            name: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
            for name, params in self.model.optimizer_groups().items()
        }
        self.noise = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.device = device

    def step(self, x: torch.Tensor) -> None:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        x_input = self.corruption(x, generator=self.noise) if self.corruption is not None else x
        self.model.train()
        self.model.training_step(x, x_input, self.optimizers, self.noise)

    def flops(self, x: torch.Tensor) -> int:
        """Floating-point operations of one training step on ``x`` (the step is taken)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.step(x)
        return counter.get_total_flops()


def bench_training(
    *,
    repeats: int = 3,
    networks: tuple[str, ...] = ("quickstart",),
    device: str | torch.device = "cpu",
    peaks: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Training's variants (:data:`TRAIN_VARIANTS`) against the bare fp32 training loop.

    On the quickstart, each variant trains one epoch of :data:`TRAIN_RECIPE` from the same
    initial weights: the bare loops over the same batches with the same optimisers and nothing
    else, timed around the epoch (data loading included); ``aesampler train`` by its own
    per-epoch clock (the ``seconds`` of the epoch record in metrics.jsonl), which covers its
    data loading, training steps and per-step log, but not the validation pass, the image grids
    or the checkpoint that follow. On the paper's 64 × 64 networks, the bare loops time
    :data:`PAPER_TRAIN_STEPS` steps on fixed synthetic images. Variants are interleaved round
    by round (a first round warms up) and each ratio is the median of the rounds' ratios.
    """
    device = torch.device(device)
    if peaks is None:
        peaks = matmul_peaks(device)
    import tempfile

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:  # the run directories of aesampler train
        if "quickstart" in networks:
            rows += _bench_quickstart_training(folder, repeats, device, peaks, log)
        if "paper" in networks:
            rows += _bench_paper_training(folder, repeats, device, peaks, log)
    return rows


def _bench_quickstart_training(folder, repeats, device, peaks, log) -> list[dict]:
    from torch.utils.data import DataLoader

    registry = get_registry()
    base = {
        **TRAIN_RECIPE,
        "train": {**TRAIN_RECIPE["train"], "device": str(device)},
        "output": {"dir": folder},
    }
    recipe = validate(base, registry=registry)
    cfg = recipe.train
    train_set = build_dataset(recipe, "train", registry)

    def bare(precision: str, channels_last: bool) -> tuple[float, int]:
        loop = _BareTraining(recipe, registry, device, precision, channels_last, train_set)
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed),
            pin_memory=device.type == "cuda",
        )
        _sync(device)
        started = time.perf_counter()
        for x, _ in loader:
            loop.step(x)
        _sync(device)
        return time.perf_counter() - started, len(loader)

    def ours(out: str, precision: str) -> tuple[float, int]:
        spec = {**base, "train": {**base["train"], "precision": precision}, "output": {"dir": out}}
        result = train(validate(spec, registry=registry), progress=False, log=lambda _: None)
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        epoch = next(json.loads(x) for x in lines if '"event": "epoch"' in x)
        return float(epoch["seconds"]), result.steps

    x = next(iter(DataLoader(train_set, batch_size=cfg.batch_size)))[0]
    flops = _BareTraining(recipe, registry, device, "fp32", False, train_set).flops(x)
    seconds: dict[str, list[float]] = {name: [] for name, *_ in TRAIN_VARIANTS}
    memory: dict[str, int | None] = dict.fromkeys(seconds)
    steps = 0
    for i in range(repeats + 1):  # the first round warms up
        for name, loop, precision, channels_last in TRAIN_VARIANTS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if loop == "bare":
                took, steps = bare(precision, channels_last)
            else:
                took, steps = ours(f"{folder}/run-{i}-{precision}", precision)
            if device.type == "cuda":
                memory[name] = torch.cuda.max_memory_allocated(device)
            if i:
                seconds[name].append(took)
        said = ", ".join(f"{name[7:]} {v[-1]:.1f}s" for name, v in seconds.items() if i)
        log(f"bench: quickstart training round {i}{': ' + said if said else ' (warm-up)'}")
    size = train_set.image_size
    return _training_rows("quickstart", size, cfg.batch_size, steps, flops, seconds, memory, peaks)


def _bench_paper_training(folder, repeats, device, peaks, log) -> list[dict]:

    registry = get_registry()
    _, size, channels, width = next(n for n in NETWORKS if n[0] == "paper")
    spec = {
        **TRAIN_RECIPE,
        "model": {**TRAIN_RECIPE["model"], "width": width},
        "data": {"name": "digits", "image_size": size},  # only for validation: no data is read
        "train": {**TRAIN_RECIPE["train"], "device": str(device)},
        "output": {"dir": folder},  # nothing is written
    }
    recipe = validate(spec, registry=registry)
    batch = recipe.train.batch_size
    images = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))
    data = SimpleNamespace(image_size=size, channels=channels)  # what build_model reads
    variants = {
        name: _BareTraining(recipe, registry, device, precision, channels_last, data)
        for name, loop, precision, channels_last in TRAIN_VARIANTS
        if loop == "bare"
    }
    flops = _BareTraining(recipe, registry, device, "fp32", False, data).flops(images)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    memory: dict[str, int | None] = dict.fromkeys(variants)
    for i in range(repeats + 1):  # the first round warms up
        for name, loop in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            started = time.perf_counter()
            for _ in range(PAPER_TRAIN_STEPS):
                loop.step(images)
            _sync(device)
            if i:
                seconds[name].append(time.perf_counter() - started)
            if device.type == "cuda":
                memory[name] = torch.cuda.max_memory_allocated(device)
        log(f"bench: paper training round {i}" + ("" if i else " (warm-up)"))
    return _training_rows("paper", size, batch, PAPER_TRAIN_STEPS, flops, seconds, memory, peaks)


def _training_rows(network, size, batch, steps, flops, seconds, memory, peaks) -> list[dict]:
    """One row per variant; the reference is the first (the bare fp32 loop)."""
    reference = next(iter(seconds.values()))
    precisions = {name: precision for name, _, precision, _ in TRAIN_VARIANTS}
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        peak = peaks[precisions[name]]
        rows.append(
            asdict(
                Row(
                    name,
                    network,
                    size,
                    batch,
                    steps * batch / median,
                    statistics.median(r / t for r, t in zip(reference, times)),
                    memory[name],
                    steps * flops / median / peak if peak else None,
                    precision=precisions[name],
                )
            )
        )
    return rows


def format_bench(result: dict) -> str:
    """The rows as a plain-text table, each note under it."""
    header = [
        "network",
        "size",
        "batch",
        "variant",
        "computes",
        "images/s",
        "× reference",
        "of peak",
    ]
    lines, notes = [], []
    for row in result["rows"]:
        fraction = row["fraction_of_matmul_peak"]
        timed = row["images_per_s"] is not None
        mark = ""
        if row.get("note"):
            if row["note"] not in notes:
                notes.append(row["note"])
            mark = " [" + str(notes.index(row["note"]) + 1) + "]"
        lines.append(
            [
                row["network"],
                f"{row['image_size']}x{row['image_size']}",
                str(row["batch"]),
                row["name"] + mark,
                row.get("precision", ""),
                f"{row['images_per_s']:.0f}" if timed else "-",
                f"{row['ratio_to_reference']:.2f}" if timed else "-",
                "-" if fraction is None else f"{100 * fraction:.0f}%",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
    peaks = result["matmul_peak_flops"]
    auto = result.get("auto_precision") or {}
    return "\n".join(
        [
            *text,
            *(f"[{i}] {note}" for i, note in enumerate(notes, 1)),
            f"({result['device']}, CPU capability {result.get('cpu_capability', '?')}, "
            f"precision auto: {auto.get('precision', '?')}; {result['threads']} threads, "
            f"{result['steps']} chain steps, median of {result['repeats']} interleaved rounds; "
            f"matmul peak {peaks['fp32'] / 1e9:.0f} GFLOP/s fp32, "
            f"{peaks['bf16'] / 1e9:.0f} GFLOP/s bf16)",
        ]
    )
