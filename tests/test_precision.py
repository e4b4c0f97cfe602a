"""``precision: auto``: chosen by the hardware's own capability queries; explicit bf16 on slow
hardware warns once; Chain.run's fast layout leaves a user's modules exactly as they were."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

import aesampler
from aesampler import Chain, GaussianCorruption
from aesampler import precision as P
from aesampler.models import AAE

from .conftest import cli


def cpu(monkeypatch, capability: str, avx512_bf16: bool, amx: bool = False) -> None:
    """Make this process see a CPU with ``capability`` and these bfloat16 units (PyTorch's own
    queries, which aesampler.precision reads), and forget earlier warnings."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(P, "_WARNED", set())


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "expected"),
    [
        ("AVX512", True, False, "bf16"),  # AVX512-BF16
        ("AVX512", False, True, "bf16"),  # AMX
        ("AVX512", False, False, "fp32"),  # AVX512 without bf16 units
        ("AVX2", False, False, "fp32"),  # the AMD EPYC
        ("AVX2", True, False, "fp32"),  # units present, but ATEN_CPU_CAPABILITY=avx2
        ("DEFAULT", False, False, "fp32"),
    ],
)
def test_auto_is_bf16_only_where_the_cpu_computes_it_fast(
    monkeypatch, capability, avx512_bf16, amx, expected
):
    cpu(monkeypatch, capability, avx512_bf16, amx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        choice = P.resolve_precision("cpu", "auto")
    assert (choice.requested, choice.precision) == ("auto", expected)
    assert choice.fast_bf16 is (expected == "bf16")
    assert capability in choice.reason
    assert choice.describe().startswith(f"precision auto -> {expected} (")


def test_auto_on_cuda_follows_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert P.resolve_precision("cuda:0", "auto").precision == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (6, 1))
    choice = P.resolve_precision("cuda:0", "auto")
    assert choice.precision == "fp32" and "no tensor cores" in choice.reason


def test_explicit_bf16_on_slow_hardware_runs_and_warns_once_with_the_reason(monkeypatch):
    cpu(monkeypatch, "AVX2", False)
    with pytest.warns(aesampler.SlowPrecisionWarning, match="capability AVX2") as caught:
        assert P.resolve_precision("cpu", "bf16").precision == "bf16"
        P.resolve_precision("cpu", "bf16")
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("cpu", "fp32").precision == "fp32"  # fp32 never warns


def test_explicit_bf16_on_fast_hardware_does_not_warn(monkeypatch):
    cpu(monkeypatch, "AVX512", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("cpu", "bf16").precision == "bf16"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("cpu", "fp16")
    with pytest.raises(aesampler.ChainInputError, match="precision must be one of"):
        Chain(*_nets()[:2]).run(n=2, steps=1, precision="half")


def _nets():
    torch.manual_seed(0)
    model = AAE(image_size=16, channels=1, latent_dim=8, width=8)
    return model.encoder, model.decoder, model


def _snapshot(model):
    return {
        name: (t.data_ptr(), t.detach().clone(), t.is_contiguous(), t.stride())
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }


def _assert_same(model, before):
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for name, (pointer, value, contiguous, stride) in before.items():
        now = after[name]
        assert now[0] == pointer, name  # the very same storage
        assert torch.equal(now[1], value), name
        assert (now[2], now[3]) == (contiguous, stride), name


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bf16_runs_in_channels_last_and_leaves_the_modules_exactly_as_they_were(
    monkeypatch, layout
):
    cpu(monkeypatch, "AVX512", True)
    encoder, decoder, model = _nets()
    model.to(memory_format=layout)
    before = _snapshot(model)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert convs
    seen = []

    def during(_):
        seen.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in convs))

    chain = Chain(encoder, decoder, GaussianCorruption(0.5))
    result = chain.run(n=6, steps=2, seed=0, callback=during)  # auto: bf16 on this CPU
    assert result.precision.precision == "bf16" and all(seen)
    _assert_same(model, before)
    # The layout changes no value: bf16 with and without it agree exactly.
    again = chain.run(n=6, steps=2, seed=0, precision="bf16")
    assert torch.equal(again.x[2], result.x[2])


def test_fp32_keeps_the_layout_and_auto_is_fp32_without_fast_bf16(monkeypatch):
    cpu(monkeypatch, "AVX2", False)
    encoder, decoder, model = _nets()
    before = _snapshot(model)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    seen = []
    chain = Chain(encoder, decoder)
    result = chain.run(
        n=4, steps=1, seed=0, callback=lambda _: seen.append(all(w.is_contiguous() for w in convs))
    )
    assert result.precision.precision == "fp32" and "AVX2" in result.precision.reason
    assert all(seen)
    exact = chain.run(n=4, steps=1, seed=0, precision="fp32")
    assert torch.equal(exact.x[1], result.x[1])  # auto here is exactly fp32
    _assert_same(model, before)


def test_a_failing_run_still_gives_the_weights_back(monkeypatch):
    cpu(monkeypatch, "AVX512", True)
    encoder, decoder, model = _nets()
    before = _snapshot(model)

    def boom(_):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        Chain(encoder, decoder).run(n=4, steps=2, seed=0, precision="bf16", callback=boom)
    _assert_same(model, before)


def test_sample_records_what_auto_chose_and_says_it(tiny_run, tmp_path):
    _, shared, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(shared, run)  # the shared run stays as the other tests read it
    done = cli("sample", str(run), "--overwrite", "--quiet", "sampling.num_chains=8")
    assert done.returncode == 0, done.stderr
    settings = json.loads((run / "samples" / "settings.json").read_text())
    assert settings["precision"]["requested"] == "auto"
    assert settings["precision"]["precision"] == "fp32"  # this suite's CPU: no fast bf16
    assert "sample: precision auto -> fp32 (" in done.stdout


def test_explicit_bf16_on_slow_hardware_warns_once_on_the_cli_in_one_line(tiny_run, tmp_path):
    from aesampler.cli import format_warning

    _, shared, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(shared, run)
    P._WARNED.clear()
    argv = ["sample", str(run), "--overwrite", "--quiet", "sampling.num_chains=8"]
    with pytest.warns(aesampler.SlowPrecisionWarning) as caught:
        done = cli(*argv, "sampling.precision=bf16")
    assert done.returncode == 0, done.stderr
    assert len(caught) == 1
    warning = caught[0]
    line = format_warning(warning.message, warning.category, warning.filename, warning.lineno)
    assert line.startswith("aesampler: warning: precision 'bf16' on this device will")
    assert "no AVX512-BF16 or AMX" in line and line.count("\n") == 1
    settings = json.loads((run / "samples" / "settings.json").read_text())
    assert settings["precision"]["precision"] == "bf16" and not settings["precision"]["fast_bf16"]
