"""The CPU fast variant's capped ratios (actgen.derive.capped_ratio_form): one ratio of
polynomials in E = exp(min(u, cap)) instead of a ratio in exp(-|u|) for each sign of u.

Checked against torch's own float64 formula with autograd (an independent reference), at
the caps' edges and far beyond them, in chunks where the capped form overflows (the chunk
must go to the guarded function and come back exact); and the compiler must refuse a cap
that is not accurate.
"""
import importlib
import math
import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

from actgen import derive
from actgen import runtime as rt
from actgen.runtime.activation import Activation

from _reference import SPECS

MISH = importlib.import_module("actgen.ops.mish")


def _mish64(x):
    """mish and its derivative in float64, from torch's ops and autograd."""
    x = x.double().clone().requires_grad_()
    y = x * torch.tanh(F.softplus(x, threshold=40.0))
    (d,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), d


def _caps(block):
    return {a for _, e in (*block.assignments, *block.outputs) for a in e.atoms(derive.CappedExp)}


def test_capped_exp_is_exp_of_the_capped_argument():
    u = torch.tensor([-1e4, -100.0, 0.0, 11.5, 12.0, 12.5, 30.0, 1e30])
    for dtype, cap in ((torch.float32, 12.0), (torch.float64, 20.0)):
        v = u.to(dtype)
        want = torch.exp(torch.clamp(v, max=cap))
        torch.testing.assert_close(rt.capped_exp(v, 12.0, 20.0), want, rtol=0, atol=0)
        same = v.clone()
        assert rt.capped_exp(same, 12.0, 20.0, out=same) is same
        torch.testing.assert_close(same, want, rtol=0, atol=0)


def test_mish_fast_variant_is_capped():
    """mish's fast forward and derivative are one ratio each, without a branch, and their
    outputs are checked for values that are not finite."""
    d = derive.derive(SPECS["mish"])
    for block in (d.forward_fast, d.backward_fast):
        (cap,) = _caps(block)
        assert not any(e.has(sympy.Piecewise) for _, e in (*block.assignments, *block.outputs))
        hi32, hi64 = (int(c) for c in cap.args[1:])
        assert 8 <= hi32 <= 36 and hi32 <= hi64
    source = MISH._forward_torch_fast.__code__.co_names
    assert "capped_exp" in source and "finite_or_none" in source


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capped_mish_against_torch(dtype, monkeypatch):
    """Values and gradients, in chunks, at the caps' edges and far beyond, against float64
    torch: within 4 float32 ULPs (at a derivative's root, of its magnitude nearby), and
    1e-13 relative in float64."""
    monkeypatch.setattr(Activation, "CHUNK_BYTES", 4096)
    edges = torch.tensor([11.0, 12.0, 13.0, 19.0, 20.0, 21.0, 31.9, 32.0, 40.0, 88.0, 1e4, 2e7, 1e30, 3e38])
    x = torch.cat([torch.arange(-60 * 64, 60 * 64 + 1) / 64.0, edges, -edges]).to(dtype)
    with rt.use_backend("torch"):
        y = MISH._OP.forward_impl([x], [], [], 0)
        (g,) = MISH._OP.backward_impl(torch.ones_like(x), [x], [], [], 0, [True])
    want_y, want_d = _mish64(x)
    for got, want, near_root in ((y, want_y, 0.0), (g, want_d, 2.0 ** -22)):
        assert torch.isfinite(got).all()
        err = (got.double() - want).abs()
        if dtype == torch.float64:
            bound = 1e-13 * want.abs() + near_root * 2.0 ** -29
        else:       # mish' has a root near -1.19, where its terms of magnitude ~1 cancel
            ulp = torch.from_numpy(np.spacing(want.abs().float().numpy())).double()
            bound = 4 * torch.maximum(ulp, torch.full_like(ulp, 2.0 ** -149)) + near_root
        assert bool((err <= bound).all()), float(x[(err - bound).argmax()])


def test_huge_inputs_stay_on_the_capped_ratio_and_a_non_finite_chunk_goes_to_the_guarded_function(monkeypatch):
    """float32 inputs at 1e30 and -3e38: the capped forward takes its ratio first, then x,
    so nothing overflows (x*E**2 did from |x| = 1e28, and handed the chunk over) and the
    chunk is the fast variant's; a chunk with an inf input is the guarded function's, bit
    for bit, and the other chunks the fast ones'."""
    monkeypatch.setattr(Activation, "CHUNK_BYTES", 64 * 4)
    x = torch.linspace(-5, 5, 64 * 3)
    x[70] = 1e30
    x[75] = -3e38
    x[150] = math.inf
    with rt.use_backend("torch"):
        y = MISH._OP.forward_impl([x], [], [], 0)
    buffers = [torch.empty(64) for _ in range(MISH._OP.fast_buffers[0])]
    torch.testing.assert_close(y[64:128], MISH._forward_torch_fast(x[64:128], buffers), rtol=0, atol=0)
    assert y[70] == 1e30 and y[75] == 0.0
    torch.testing.assert_close(y[128:], MISH._forward_torch(x[128:]), rtol=0, atol=0)
    assert y[150] == math.inf
    torch.testing.assert_close(y[:64], MISH._forward_torch_fast(x[:64], buffers), rtol=0, atol=0)


def test_inaccurate_caps_are_refused(monkeypatch):
    """With room for caps of 2 at most (not where mish's ratio has settled), the compiler
    keeps the fallback's form with branches."""
    monkeypatch.setattr(derive, "CAPPED_EXP_LIMITS", (derive.CAPPED_MARGIN + 8, derive.CAPPED_MARGIN + 8))
    d = derive.derive(SPECS["mish"])
    for block in (d.forward_fast, d.backward_fast):
        assert not _caps(block)
        assert any(e.has(sympy.Piecewise) for _, e in (*block.assignments, *block.outputs))


def test_capped_form_is_cheaper_on_the_cpu(monkeypatch):
    capped = derive.derive(SPECS["mish"])
    monkeypatch.setattr(derive, "CAPPED_EXP_LIMITS", (derive.CAPPED_MARGIN + 8, derive.CAPPED_MARGIN + 8))
    plain = derive.derive(SPECS["mish"])
    for a, b in ((capped.forward_fast, plain.forward_fast), (capped.backward_fast, plain.backward_fast)):
        assert _caps(a) and not _caps(b)
        assert derive._cpu_cost(a) < derive._cpu_cost(b)
