"""Launch configs (elements per program, warps) per size bucket, tuned once and kept on disk.

The kernels run under Triton's interpreter here, so the timings are stand-ins: what is
checked is that every candidate config computes the right values and gradients (param
gradients included, whose partial sums are sized from the tile), that the tuner keeps the
fastest and reuses it from memory and from its file, and when it stays out of the way.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import actgen.ops as ops
from actgen.runtime import launch, tuning
from actgen.runtime.tuning import CANDIDATES, DEFAULT, Config, Tuner

pytest.importorskip("triton")


class AlwaysOn(Tuner):
    """A tuner that tunes any tensor (the real one tunes large CUDA tensors only)."""

    def enabled(self, x):
        return True


def fake_bench(times, calls):
    """A timer that runs the launch once and reports times[config]."""
    def bench(fn):
        fn()
        return times[calls[-1]]
    return bench


@pytest.fixture
def recording_tuner(tmp_path, monkeypatch):
    """launch's tuner replaced by one that tunes everything, with made-up timings in which
    Config(2048, 8) is fastest; records every config launched."""
    calls = []
    times = {c: 1.0 + i for i, c in enumerate(CANDIDATES)}
    times[Config(2048, 8)] = 0.5
    tuner = AlwaysOn(tmp_path / "tuning.json", bench=fake_bench(times, calls))
    original = tuner.choose

    def choose(kernel, x, kind, run):
        def recorded(cfg):
            calls.append(cfg)
            return run(cfg)
        return original(kernel, x, kind, recorded)

    monkeypatch.setattr(tuner, "choose", choose)
    monkeypatch.setattr(launch, "TUNER", tuner)
    return tuner, calls


@pytest.fixture(params=CANDIDATES, ids=lambda c: f"{c.tile}x{c.num_warps}")
def forced_config(request, monkeypatch):
    """Every launch uses one candidate config."""
    monkeypatch.setattr(launch.TUNER, "choose", lambda kernel, x, kind, run: request.param)
    return request.param


def _value_and_grads(fn, ref, *tensors):
    xs = [t.clone().requires_grad_() for t in tensors]
    rs = [t.double().requires_grad_() for t in tensors]
    y, r = fn(*xs), ref(*rs)
    torch.testing.assert_close(y.double(), r, rtol=1e-5, atol=1e-6)
    g = torch.randn(y.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, xs, g.float())
    want = torch.autograd.grad(r, rs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_every_candidate_computes_the_same_flat(forced_config, triton_backend):
    x = torch.randn(3 * forced_config.tile + 5) * 4
    _value_and_grads(ops.silu, F.silu, x)
    _value_and_grads(ops.mish, F.mish, x)


@pytest.mark.parametrize("shape,channel_dim", [((5, 64, 37), 1), ((9, 7, 64), -1), ((3, 64, 2), 1)],
                         ids=["channels-first", "channels-last", "channels-first-small-inner"])
def test_every_candidate_sums_param_gradients(forced_config, triton_backend, shape, channel_dim):
    """Per-channel param gradients from per-tile partial sums, for every tile size."""
    x = torch.randn(shape)
    w = torch.rand(64) * 0.5

    def ref(x, w):
        xm = x.movedim(channel_dim, -1)
        return torch.where(xm > 0, xm, w * xm).movedim(-1, channel_dim)

    _value_and_grads(lambda x, w: ops.prelu(x, w, channel_dim=channel_dim), ref, x, w)


def test_the_fastest_config_is_kept_and_reused(recording_tuner, triton_backend, tmp_path):
    tuner, calls = recording_tuner
    x = torch.randn(5000)
    y = ops.silu(x)
    torch.testing.assert_close(y, F.silu(x))
    assert calls == list(CANDIDATES)                    # every candidate timed once
    data = json.loads((tmp_path / "tuning.json").read_text())
    (key, entry), = data["configs"].items()
    assert (entry["tile"], entry["num_warps"]) == (2048, 8)
    assert "_forward_kernel" in key and "float32" in key and "flat" in key and tuning.size_bucket(5000) in key
    assert set(entry["ms"]) == {f"{c.tile}x{c.num_warps}" for c in CANDIDATES}
    calls.clear()
    torch.testing.assert_close(ops.silu(x * 2), F.silu(x * 2))
    assert calls == []                                  # same bucket: no tuning
    assert tuner.choose(ops.silu.__globals__["_OP"].forward_kernel, x, "flat", None) == Config(2048, 8)


def test_the_file_serves_a_new_process_and_buckets_tune_apart(tmp_path):
    times = {c: 1.0 + i for i, c in enumerate(CANDIDATES)}
    times[Config(4096, 8)] = 0.1
    timed = []

    def bench(fn):
        fn()
        return times[timed[-1]]

    def run(cfg):
        timed.append(cfg)

    kernel = ops.silu.__globals__["_OP"].forward_kernel
    first = AlwaysOn(tmp_path / "t.json", bench=bench)
    assert first.choose(kernel, torch.empty(1 << 22), "flat", run) == Config(4096, 8)
    assert len(timed) == len(CANDIDATES)
    timed.clear()

    def no_bench(fn):
        raise AssertionError("tuned again")

    second = AlwaysOn(tmp_path / "t.json", bench=no_bench)      # as in a fresh process
    assert second.choose(kernel, torch.empty(3 << 22), "flat", run) == Config(4096, 8)
    # another size bucket, dtype or layout is tuned on its own
    third = AlwaysOn(tmp_path / "t.json", bench=bench)
    times[Config(1024, 4)] = 0.01
    assert third.choose(kernel, torch.empty(1 << 24), "flat", run) == Config(1024, 4)
    assert third.choose(kernel, torch.empty(1 << 22, dtype=torch.float16), "flat", run) == Config(1024, 4)
    assert third.choose(kernel, torch.empty(1 << 22), "rows", run) == Config(1024, 4)
    assert third.choose(kernel, torch.empty(1 << 22), "flat", run) == Config(4096, 8)   # cached
    assert len(json.loads((tmp_path / "t.json").read_text())["configs"]) == 4


def test_size_buckets():
    assert tuning.size_bucket(1 << 22) == tuning.size_bucket((1 << 24) - 1) == "2**22"
    assert tuning.size_bucket(1 << 24) == "2**24"
    assert tuning.size_bucket(3 << 26) == "2**26"


def test_a_damaged_file_is_ignored_and_rewritten(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{not json")
    tuner = AlwaysOn(path, bench=lambda fn: 1.0)
    kernel = ops.silu.__globals__["_OP"].forward_kernel
    assert tuner.choose(kernel, torch.empty(10), "flat", lambda cfg: None) == CANDIDATES[0]
    assert json.loads(path.read_text())["version"] == tuning.CACHE_VERSION
    path.write_text(json.dumps({"version": tuning.CACHE_VERSION, "configs": {next(iter(tuner.table)): {"tile": "x"}}}))
    fresh = AlwaysOn(path, bench=lambda fn: 1.0)
    assert fresh.choose(kernel, torch.empty(10), "flat", lambda cfg: None) == CANDIDATES[0]


def test_tuning_stays_off_where_it_cannot_help(monkeypatch, tmp_path):
    tuner = Tuner(tmp_path / "t.json", bench=lambda fn: pytest.fail("timed"))
    kernel = ops.silu.__globals__["_OP"].forward_kernel
    # CPU tensors (the interpreter), at any size
    assert not tuner.enabled(torch.empty(tuning.TUNE_MIN))
    assert tuner.choose(kernel, torch.empty(16), "flat", lambda cfg: None) == DEFAULT
    monkeypatch.setenv("ACTGEN_TUNE", "0")
    assert not tuner.enabled(torch.empty(tuning.TUNE_MIN))
    assert not (tmp_path / "t.json").exists()


def test_an_unwritable_cache_warns_and_still_launches(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    tuner = AlwaysOn(blocker / "sub" / "t.json", bench=lambda fn: 1.0)
    kernel = ops.silu.__globals__["_OP"].forward_kernel
    with pytest.warns(UserWarning, match="could not save tuned launch configs"):
        assert tuner.choose(kernel, torch.empty(10), "flat", lambda cfg: None) == CANDIDATES[0]
