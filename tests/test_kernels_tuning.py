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
from actgen.runtime.tuning import CANDIDATES, DEFAULT, NARROW, Config, Tuner, candidates

# what launches of float32 data tune among (the tests' tensors are float32)
FLOAT32 = candidates(torch.float32)
FLOAT32_PARAM_GRAD = candidates(torch.float32, True)

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


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
    times = {c: 1.0 + i for i, c in enumerate(FLOAT32_PARAM_GRAD)}
    times[Config(2048, 8)] = 0.5
    times[Config(1024, 4, step=True)] = 0.25         # only a backward with param gradients has it
    tuner = AlwaysOn(tmp_path / "tuning.json", bench=fake_bench(times, calls))
    original = tuner.choose

    def choose(kernel, x, kind, run, candidates=CANDIDATES):
        def recorded(cfg):
            calls.append(cfg)
            return run(cfg)
        return original(kernel, x, kind, recorded, candidates)

    monkeypatch.setattr(tuner, "choose", choose)
    monkeypatch.setattr(launch, "TUNER", tuner)
    return tuner, calls


class Forced(Tuner):
    """A tuner whose choice, and so every launch plan's config, is one config."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def choose(self, kernel, x, kind, run, candidates=CANDIDATES):
        return self.cfg

    def settled(self, kernel, x, kind):
        return self.cfg


def _force(monkeypatch, cfg):
    monkeypatch.setattr(launch, "TUNER", Forced(cfg))
    return cfg


@pytest.fixture(params=FLOAT32, ids=lambda c: c.label)
def forced_config(request, monkeypatch):
    """Every launch uses one candidate config."""
    return _force(monkeypatch, request.param)


@pytest.fixture(params=FLOAT32_PARAM_GRAD, ids=lambda c: c.label)
def forced_param_grad_config(request, monkeypatch):
    """Every launch uses one candidate config of a backward with param gradients (stepping or not)."""
    return _force(monkeypatch, request.param)


def _value_and_grads(fn, ref, *tensors):
    xs = [t.clone().requires_grad_() for t in tensors]
    rs = [t.double().requires_grad_() for t in tensors]
    y, r = fn(*xs), ref(*rs)
    torch.testing.assert_close(y.double(), r, rtol=1e-5, atol=1e-6)
    g = torch.randn(y.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, xs, g.float())
    want = torch.autograd.grad(r, rs, g)
    for a, b in zip(got, want):
        # a param gradient is a float32 sum over many elements: its error grows with their count
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6 * max(1.0, tensors[0].numel() ** 0.5))


def test_every_candidate_computes_the_same_flat(forced_config, triton_backend):
    x = torch.randn(3 * forced_config.tile + 5) * 4
    _value_and_grads(ops.silu, F.silu, x)
    _value_and_grads(ops.mish, F.mish, x)


# more tiles than programs (under the interpreter): each program steps through several tiles
STEPPING = [((40, 64, 37), 1, 64), ((900, 64), -1, 64), ((200, 3, 50), 1, 3), ((7, 5, 3, 100), 1, 5),
            ((20000, 3), -1, 3)]


def test_the_stepping_shapes_step():
    for shape, channel_dim, channels in STEPPING:
        lay = launch.layout(shape, channel_dim % len(shape), channels)
        programs, iters = launch.param_grad_programs(lay, torch.device("cpu"))
        assert iters > 1 and programs * iters >= lay.tiles_m * lay.tiles_n, shape


@pytest.mark.parametrize("shape,channel_dim,channels", [
    ((5, 64, 37), 1, 64), ((9, 7, 64), -1, 64), ((3, 64, 2), 1, 64), *STEPPING,
], ids=["channels-first", "channels-last", "channels-first-small-inner", "stepping-channels-first",
        "stepping-channels-last", "stepping-3-channels", "stepping-5-channels-4d", "stepping-3-channels-last"])
def test_every_candidate_sums_param_gradients(forced_param_grad_config, triton_backend, shape, channel_dim, channels):
    """Per-channel param gradients from per-program partial sums, for every tile size, also
    where programs step through several tiles (and an odd channel count repeats across them)."""
    x = torch.randn(shape)
    w = torch.rand(channels) * 0.5

    def ref(x, w):
        xm = x.movedim(channel_dim, -1)
        return torch.where(xm > 0, xm, w * xm).movedim(-1, channel_dim)

    _value_and_grads(lambda x, w: ops.prelu(x, w, channel_dim=channel_dim), ref, x, w)


def test_shared_and_per_channel_params_when_stepping(triton_backend, monkeypatch):
    """learnable_activation: per-channel alpha and scale, one shared shift, over many tiles."""
    _force(monkeypatch, Config(1024, 4, step=True))
    x = torch.randn(30, 6, 200)
    alpha, scale, shift = torch.rand(6) * 0.5, torch.rand(6) + 0.5, torch.randn(1)
    lay = launch.layout(x.shape, 1, 6)
    assert launch.param_grad_programs(lay, x.device)[1] > 1

    def ref(x, a, s, b):
        a, s = a.view(-1, 1), s.view(-1, 1)
        return s * torch.where(x > 0, x, a * x) + b

    _value_and_grads(ops.learnable_activation, ref, x, alpha, scale, shift)


def _compiled_and_timed(candidates):
    """Each candidate launched once to compile it (and read its spill count), then timed."""
    return [c for c in candidates for _ in range(2)]


def test_the_fastest_config_is_kept_and_reused(recording_tuner, triton_backend, tmp_path):
    tuner, calls = recording_tuner
    x = torch.randn(5000)
    y = ops.silu(x)
    torch.testing.assert_close(y, F.silu(x))
    assert calls == _compiled_and_timed(FLOAT32)
    data = json.loads((tmp_path / "tuning.json").read_text())
    (key, entry), = data["configs"].items()
    assert (entry["tile"], entry["num_warps"]) == (2048, 8)
    assert "_forward_kernel" in key and "float32" in key and "flat" in key and tuning.size_bucket(5000) in key
    assert set(entry["ms"]) == {c.label for c in FLOAT32}
    calls.clear()
    torch.testing.assert_close(ops.silu(x * 2), F.silu(x * 2))
    assert calls == []                                  # same bucket: no tuning
    assert tuner.choose(ops.silu.__globals__["_OP"].forward_kernel, x, "flat", None) == Config(2048, 8)


def test_a_choice_is_kept_in_memory(tmp_path, monkeypatch):
    """A launch whose kernel, device, dtype, layout and size bucket were tuned takes the choice
    from memory: no table key built, no file read (host time per call)."""
    calls = []
    times = {c: 0.5 if c == Config(2048, 4) else 1.0 for c in CANDIDATES}
    tuner = AlwaysOn(tmp_path / "tuning.json", bench=fake_bench(times, calls))
    kernel, x = ops.silu.__globals__["_OP"].forward_kernel, torch.randn(5000)
    assert tuner.choose(kernel, x, "flat", calls.append) == Config(2048, 4)
    monkeypatch.setattr(tuner, "key", lambda *a: pytest.fail("the table was asked again"))
    assert tuner.choose(kernel, torch.randn(6000), "flat", lambda cfg: pytest.fail("tuned again")) == Config(2048, 4)
    # another dtype, layout or size bucket is another choice
    for other in ((torch.randn(5000, dtype=torch.float64), "flat"), (x, "rows"), (torch.randn(50000), "flat")):
        with pytest.raises(pytest.fail.Exception):
            tuner.choose(kernel, other[0], other[1], calls.append)


def test_a_backward_with_param_gradients_also_tunes_stepping(recording_tuner, triton_backend, tmp_path):
    tuner, calls = recording_tuner
    x = torch.randn(4, 64, 37, requires_grad=True)
    w = (torch.rand(64) * 0.5).requires_grad_()
    y = ops.prelu(x, w)
    calls.clear()                                       # the forward's tuning
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    assert calls == _compiled_and_timed(FLOAT32_PARAM_GRAD)
    torch.testing.assert_close(gw, (g * torch.where(x > 0, 0.0, x)).sum((0, 2)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, g * torch.where(x > 0, 1.0, w.view(-1, 1)))
    entries = json.loads((tmp_path / "tuning.json").read_text())["configs"]
    (key, entry), = [(k, e) for k, e in entries.items() if "_backward_kernel" in k]
    assert "rows+param_grad" in key and entry["step"] is True and entry["tile"] == 1024
    calls.clear()
    torch.autograd.grad(ops.prelu(x, w.detach()), x, g)   # param frozen: another kind, not stepping
    assert calls == _compiled_and_timed(FLOAT32)


def test_a_param_gradient_backward_is_timed_with_its_sums(recording_tuner, triton_backend, monkeypatch):
    """What a config leaves to sum after the kernel (one partial sum per tile where it does not
    step) is part of what the tuner times: every launch, each timed one included, sums its
    partial sums into the params' gradients; the gradients are those of the launch kept."""
    tuner, calls = recording_tuner
    summed = []
    original = launch.finish_param_grads

    def counted(partials, *args):
        summed.append(partials.shape)
        return original(partials, *args)
    monkeypatch.setattr(launch, "finish_param_grads", counted)
    x = torch.randn(16, 64, 37, requires_grad=True)
    w = (torch.rand(64) * 0.5).requires_grad_()
    y = ops.prelu(x, w)
    calls.clear()
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    assert calls == _compiled_and_timed(FLOAT32_PARAM_GRAD) and len(summed) == len(calls) + 1    # (+ the launch kept)
    assert len(set(summed)) > 1             # (the partial sums' count follows the config)
    torch.testing.assert_close(gw, (g * torch.where(x > 0, 0.0, x)).sum((0, 2)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, g * torch.where(x > 0, 1.0, w.view(-1, 1)))


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
    assert timed == _compiled_and_timed(CANDIDATES)
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


def test_a_candidate_that_spills_is_not_timed(tmp_path):
    class Compiled:
        def __init__(self, spills):
            self.n_spills = spills

    timed = []
    spilling = {Config(2048, 4), Config(4096, 8)}

    def run(cfg):
        timed.append(cfg)
        return Compiled(64 if cfg in spilling else 0)

    def bench(fn):
        fn()
        return {Config(4096, 8): 0.1, Config(2048, 4): 0.2}.get(timed[-1], 1.0)

    kernel = ops.silu.__globals__["_OP"].forward_kernel
    tuner = AlwaysOn(tmp_path / "t.json", bench=bench)
    assert tuner.choose(kernel, torch.empty(10), "flat", run) not in spilling
    entry, = json.loads((tmp_path / "t.json").read_text())["configs"].values()
    assert set(entry["ms"]) == {c.label for c in CANDIDATES if c not in spilling}


def test_four_elements_a_thread_are_candidates_for_4_and_8_byte_data_only():
    """Four elements a thread still move one 128-bit vector an access for float32 and float64,
    half of one for 16-bit data; every candidate steps too where param gradients are summed."""
    for dtype in (torch.float32, torch.float64):
        assert candidates(dtype) == CANDIDATES + NARROW
        assert all(c.tile // (32 * c.num_warps) == 4 for c in NARROW)
    for dtype in (torch.bfloat16, torch.float16):
        assert candidates(dtype) == CANDIDATES
    for dtype in (torch.float32, torch.bfloat16):
        plain = candidates(dtype)
        assert candidates(dtype, True) == plain + tuple(Config(c.tile, c.num_warps, True) for c in plain)
    assert DEFAULT in candidates(torch.bfloat16) and tuning.CACHE_VERSION == 3


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


ADAPTIVE = "(exp(w0) * Max(x, 0) + exp(w1) * tanh(x) + exp(w2) * x) / (exp(w0) + exp(w1) + exp(w2))"


@pytest.mark.parametrize("cfg", [DEFAULT, Config(1024, 4, step=True)], ids=lambda c: c.label)
def test_param_gradients_summed_by_basis(cfg, triton_backend, monkeypatch):
    """adaptive_mixture's weights' gradients share their terms of x (relu(x), tanh(x), x): the
    kernel sums grad times each term and combines the sums once per program; where an input
    or grad is +-inf or NaN it goes through its tiles again per element, and gives what the
    fallback's per-element gradients give (limits at +-inf, NaN; flat and per-channel)."""
    import actgen
    from actgen.runtime import use_backend

    _force(monkeypatch, cfg)
    pc = actgen.compile(ADAPTIVE, name="am_pc", params={w: {"init": 0.0, "per_channel": True} for w in ("w0", "w1", "w2")})
    assert "_reduce_partial(_sum_b0" in open(pc.am_pc.__code__.co_filename).read()
    cases = [(ops.adaptive_mixture, (3 * 1024 + 5,), None, [torch.tensor([0.3]), torch.tensor([-0.2]), torch.tensor([0.1])])]
    cases += [(pc.am_pc, shape, cd, [torch.randn(3) * 0.5 for _ in range(3)]) for shape, cd in (((200, 3, 50), 1), ((900, 3), 1))]
    for fn, shape, cd, ws in cases:
        kw = {} if cd is None else {"channel_dim": cd}
        x, g = torch.randn(shape) * 3, torch.randn(shape)
        inf, nan = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
        inf.view(-1)[[17, 2000]] = True
        nan.view(-1)[1500] = True
        for xs, gs in ((x, g), (x.masked_fill(inf, float("inf")), g), (-x.masked_fill(inf, float("inf")), g.masked_fill(inf, 0.0)),
                       (x.masked_fill(nan, float("nan")), g), (x, g.masked_fill(inf, float("inf")))):
            got = {}
            for backend in ("torch", "triton"):
                with use_backend(backend):
                    leaves = [xs.clone().requires_grad_(), *(w.clone().requires_grad_() for w in ws)]
                    got[backend] = torch.autograd.grad(fn(*leaves, **kw), leaves, gs)
            for a, b in zip(got["triton"], got["torch"]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
