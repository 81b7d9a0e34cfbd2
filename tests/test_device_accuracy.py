"""The GPU accuracy check (actgen.device_accuracy), run here on CPU tensors under Triton's
interpreter: what it collects is scored against the mpmath oracle, and a wrong value is
caught."""
import numpy as np
import pytest
import torch

from actgen import device_accuracy as da
from actgen.catalogue import TARGET_ULP, grid
from actgen.spec import load_specs

pytestmark = pytest.mark.skipif(not da.HAS_TRITON, reason="triton is not installed")

XS = grid(step=0.25, n_log=20)


@pytest.fixture(scope="module")
def specs():
    return {s.name: s for s in load_specs([da.DEFAULT_SPECS]) if s.name in ("silu", "prelu", "polynomial")}


@pytest.fixture(scope="module")
def silu_values(specs):
    arrays = da.collect_values(specs["silu"], XS, "cpu")
    return {da._key("silu", k): v for k, v in arrays.items()}


def test_collected_values_meet_the_target(specs, silu_values):
    acc = da.score_entry(specs["silu"], silu_values, XS)
    scores = {**acc.compiled, **acc.dense}
    assert {(b, d) for b, d, _ in scores} == {("triton", "float32"), ("triton", "bfloat16")}
    assert all(s.meets_target and s.points > 0 for s in scores.values()), scores
    assert len(silu_values["silu|dense|chosen"]) >= da.DENSE_CONFIRM


def test_a_wrong_value_is_caught(specs, silu_values):
    """Every collected float32 f off by 2**-20 (8 ULP): the scores say so."""
    bad = dict(silu_values)
    bad["silu|grid|float32|f"] = (silu_values["silu|grid|float32|f"].astype(np.float64) * (1 + 2.0**-20)).astype(np.float32)
    acc = da.score_entry(specs["silu"], bad, XS)
    assert acc.compiled[("triton", "float32", "f")].worst_scaled > TARGET_ULP
    assert acc.compiled[("triton", "float32", "df/dx")].meets_target


def test_param_gradients_against_float64(specs):
    rows = da.check_param_grads(specs["prelu"], "cpu", shapes=(((3, 64, 33), 1), ((65, 64), -1)))
    rows += da.check_param_grads(specs["polynomial"], "cpu", shapes=(((10_001,), 1),))
    assert [r["param"] for r in rows] == ["weight", "weight", "a0", "a1", "a2", "a3"]
    assert all(r["ok"] and r["kernel_rel_err"] < 1e-5 for r in rows), rows


def test_kernel_exp_check():
    e = da.check_exp("cpu", n_uniform=20_000)
    assert e["max_ulp_normal"] <= 1.0 and e["max_abs_subnormal"] <= 2.0**-149
    assert e["inf_where_expected"] and e["nan_where_expected"] and e["zero_at_minus_inf"]


def test_kernel_log1p_check():
    g = da.check_log1p("cpu", n_uniform=20_000)
    assert g["max_ulp_normal"] <= 1.0 and g["specials_as_expected"] and g["points"] > 20_000


def test_report(specs, silu_values):
    meta = {"info": {"device": "cpu", "date": "today", "torch": torch.__version__, "triton": "x"},
            "failures": {"gelu": "RuntimeError: no"}, "exp": da.check_exp("cpu", n_uniform=1000),
            "log1p": {"points": 10, "max_ulp_normal": 3.5, "specials_as_expected": False},
            "fast16": {"points": 5, "log1p_max_rel": 1e-5, "erfc_max_rel": 1e-3, "specials_as_expected": True},
            "param_grads": [{"entry": "prelu", "param": "weight", "shape": [3, 64, 5], "channel_dim": 1,
                             "kernel_rel_err": 1e-7, "fallback_f32_rel_err": 1e-7, "ok": True}]}
    text = da.report(meta, [da.score_entry(specs["silu"], silu_values, XS)], len(XS))
    assert "| [silu](" in text and "**1 of 1 pass.**" in text and "**gelu**: RuntimeError: no" in text
    assert "Nowhere." in text
    assert "worst 3.500 ULP" in text and "for NaN, inf at inf: **no**" in text
    assert "## The 16-bit kernels' log1p and erfc" in text and "0.001 (erfc)" in text and "**beyond** the bound" in text


def test_collect_and_score_files(tmp_path, monkeypatch):
    """The two steps through their files, as on a GPU machine and then anywhere."""
    monkeypatch.setattr(da, "grid", lambda: XS)
    monkeypatch.setattr(da, "PARAM_SHAPES_FLAT", (((4097,), 1),))
    monkeypatch.setattr(da, "check_exp", lambda device, n_uniform=0: {
        "points": 1, "max_ulp_normal": 0.5, "max_abs_subnormal": 0.0, "inf_where_expected": True,
        "nan_where_expected": True, "zero_at_minus_inf": True})
    monkeypatch.setattr(da, "check_log1p", lambda device, n_uniform=0: {
        "points": 1, "max_ulp_normal": 0.5, "specials_as_expected": True})
    monkeypatch.setattr(da, "check_fast16", lambda device: {
        "points": 1, "log1p_max_rel": 1e-6, "erfc_max_rel": 1e-6, "specials_as_expected": True})
    monkeypatch.setattr(da, "check_direct_launch", lambda device: {"cases": 2, "direct_launches": 4, "mismatches": []})
    monkeypatch.setattr(da, "check_variant_store", lambda device: {
        "cases": 2, "recorded": 4, "loaded": 4, "recorded_again": 0, "first_case_s": [0.5, 0.01], "mismatches": []})
    path = da.collect(da.DEFAULT_SPECS, "cpu", tmp_path / "v.npz", jobs=1, names=["relu", "polynomial"], log=lambda s: None)
    meta, arrays = da.load(path)
    assert meta["failures"] == {} and meta["entries"] == ["polynomial", "relu"]
    assert len(meta["param_grads"]) == 4 and all(r["ok"] for r in meta["param_grads"])
    out = da.score_file(path, da.DEFAULT_SPECS, tmp_path / "accuracy.md", jobs=1, log=lambda s: None)
    text = out.read_text()
    assert "| [relu](" in text and "| [polynomial](" in text and "**4 of 4 pass.**" in text
    assert "within the bound of 2^-14" in text
    assert "## Direct launches" in text and "4 direct launches: equal." in text
    assert "the second loaded 4 and compiled 0" in text and "bitwise: equal." in text


class _FakeLauncher:
    """Stands in for actgen.runtime.variants.LAUNCH where no kernel variant is compiled: on
    (`enabled`), every launch counts as direct and, with `corrupt`, its last tensor argument
    (the output, an input gradient, or the param-gradient partial sums) is off by one."""

    def __init__(self, corrupt):
        self.enabled, self.direct, self.corrupt = True, 0, corrupt

    def __call__(self, kernel, grid, args, consts, num_warps):
        from actgen.runtime.variants import jit_launch

        result = jit_launch(kernel, grid, args, consts, num_warps)
        if self.enabled:
            self.direct += 1
            if self.corrupt:
                [t for t in args if isinstance(t, torch.Tensor)][-1].add_(1)
        return result


@pytest.mark.parametrize("corrupt", [False, True])
def test_direct_launch_check(corrupt, monkeypatch):
    from actgen.runtime import launch

    fake = _FakeLauncher(corrupt)
    monkeypatch.setattr(launch, "LAUNCH", fake)
    d = da.check_direct_launch("cpu")
    assert d["cases"] == 2 * len(da.DIRECT_LAUNCH_CASES) == 12 and d["direct_launches"] == fake.direct > 0 and fake.enabled
    if corrupt:
        assert d["mismatches"] == [f"{n} {t}" for n in da.DIRECT_LAUNCH_CASES for t in ("float32", "bfloat16")]
    else:
        assert d["mismatches"] == []


@pytest.mark.parametrize("d,says", [({"cases": 10, "direct_launches": 40, "mismatches": []}, "40 direct launches: equal."),
                                    ({"cases": 10, "direct_launches": 0, "mismatches": []}, "**no direct launch was made**"),
                                    ({"cases": 10, "direct_launches": 9, "mismatches": ["prelu bfloat16"]},
                                     "**results differ**: prelu bfloat16."),
                                    ({"error": "RuntimeError: x"}, "**not checked**: RuntimeError: x")])
def test_direct_launch_report(d, says):
    meta = {"info": {"device": "cpu", "date": "today", "torch": "t", "triton": "x"}, "failures": {},
            "exp": da.check_exp("cpu", n_uniform=1000), "param_grads": [], "direct_launch": d}
    assert says in da.report(meta, [], len(XS)).split("## Direct launches")[1]


@pytest.mark.parametrize("corrupt", [False, True])
def test_static_launch_check(corrupt, monkeypatch):
    """Launches through torch's launcher (a stand-in here: the JIT's, corrupted or not)
    against the JIT's, with the process's launcher restored after."""
    from actgen.runtime import launch, static_launch, variants

    fake = _FakeLauncher(corrupt)
    fake.static, fake.variants = True, {}
    monkeypatch.setattr(static_launch, "available", lambda: True)
    monkeypatch.setattr(variants, "Launcher", lambda **kw: fake if kw.get("static") else pytest.fail("not static"))
    before = launch.LAUNCH
    d = da.check_static_launch("cpu")
    assert launch.LAUNCH is before and before.enabled == variants.LAUNCH.enabled
    assert d["cases"] == 2 * len(da.DIRECT_LAUNCH_CASES) and d["launches"] == fake.direct > 0 and d["still_static"]
    if corrupt:
        assert d["mismatches"] == [f"{n} {t}" for n in da.DIRECT_LAUNCH_CASES for t in ("float32", "bfloat16")]
    else:
        assert d["mismatches"] == []


def test_static_launch_check_without_torchs_launcher():
    assert da.check_static_launch("cpu") == {"available": False}


@pytest.mark.parametrize("d,says", [
    ({"available": False}, "**not checked**: this torch has no launcher"),
    ({"available": True, "cases": 10, "launches": 40, "static_variants": 12, "variants": 12, "still_static": True,
      "mismatches": []}, "40 launches through torch's launcher, 12 of 12 variants loaded through it: equal."),
    ({"available": True, "cases": 10, "launches": 3, "static_variants": 0, "variants": 12, "still_static": False,
      "mismatches": ["silu float32"]}, "(**it refused a launch**: Triton's launcher took over): **results differ**")])
def test_static_launch_report(d, says):
    meta = {"info": {"device": "cpu", "date": "today", "torch": "t", "triton": "x"}, "failures": {},
            "exp": da.check_exp("cpu", n_uniform=1000), "param_grads": [], "static_launch": d}
    assert says in da.report(meta, [], len(XS)).split("## Launches through torch's launcher")[1]


def test_variant_store_check_runs_two_fresh_processes(tmp_path):
    """On CPU (the interpreter) nothing is compiled, so nothing is recorded or loaded, but the
    two fresh processes run every case and their results compare equal (the draws are seeded)."""
    d = da.check_variant_store("cpu")
    assert d["cases"] == 2 * len(da.DIRECT_LAUNCH_CASES) and d["mismatches"] == [] and d["loaded"] == 0 and d["recorded"] == 0
    assert all(t > 0 for t in d["first_case_s"])


@pytest.mark.parametrize("corrupt", [False, True])
def test_variant_store_check_compares_the_fresh_processes(corrupt):
    """Stand-in processes: the second's results against the first's, bitwise."""
    def run(device, directory, k):
        outputs = {"silu float32": [torch.arange(4.0), torch.ones(4)], "prelu bfloat16": [torch.zeros(3)]}
        if corrupt and k == 1:
            outputs["prelu bfloat16"][0][1] = 2 ** -20
        return outputs, {"first_case_s": 0.1 * (2 - k), "loaded": 2 * k, "recorded": 2 * (1 - k)}

    d = da.check_variant_store("cuda", run=run)
    assert d["cases"] == 2 and d["recorded"] == 2 and d["loaded"] == 2 and d["recorded_again"] == 0
    assert d["mismatches"] == (["prelu bfloat16"] if corrupt else [])


@pytest.mark.parametrize("corrupt", [False, True])
def test_variant_store_check_loads_through_torchs_launcher_in_a_third_process(corrupt, monkeypatch):
    """Where torch has its launcher, a third stand-in process runs with it on; its results
    against the first's, bitwise."""
    from actgen.runtime import static_launch

    monkeypatch.setattr(static_launch, "available", lambda: True)
    envs = []

    def run(device, directory, k, env=None):
        envs.append(env)
        outputs = {"silu float32": [torch.arange(4.0), torch.ones(4)]}
        if corrupt and k == 2:
            outputs["silu float32"][1][0] = 0.5
        return outputs, {"first_case_s": 0.1, "loaded": 2 * (k > 0), "recorded": 2 * (k == 0), "static": k == 2}

    d = da.check_variant_store("cuda", run=run)
    assert envs == [None, None, {"ACTGEN_STATIC_LAUNCH": "1"}] and d["mismatches"] == []
    assert d["static"] == {"loaded": 2, "recorded": 0, "on": True, "first_case_s": 0.1,
                           "mismatches": ["silu float32"] if corrupt else []}
    meta = {"info": {"device": "cpu", "date": "today", "torch": "t", "triton": "x"}, "failures": {},
            "exp": da.check_exp("cpu", n_uniform=1000), "param_grads": [], "variant_store": d}
    text = da.report(meta, [], len(XS))
    assert "A third process, launching through torch's launcher (ACTGEN_STATIC_LAUNCH=1), loaded 2 variants" in text
    assert ("**results differ**: silu float32." if corrupt else "against the first process's, bitwise: equal.") in text


@pytest.mark.parametrize("v,says", [
    ({"cases": 10, "recorded": 20, "loaded": 20, "recorded_again": 0, "first_case_s": [0.3, 0.02], "mismatches": []},
     "the second loaded 20 and compiled 0"),
    ({"cases": 10, "recorded": 20, "loaded": 0, "recorded_again": 20, "first_case_s": [0.3, 0.3], "mismatches": []},
     "**no variant was loaded from the store**"),
    ({"cases": 10, "recorded": 20, "loaded": 20, "recorded_again": 0, "first_case_s": [0.3, 0.02],
      "mismatches": ["silu float32"]}, "**results differ**: silu float32"),
    ({"error": "RuntimeError: x"}, "**not checked**: RuntimeError: x")])
def test_variant_store_report(v, says):
    meta = {"info": {"device": "cpu", "date": "today", "torch": "t", "triton": "x"}, "failures": {},
            "exp": da.check_exp("cpu", n_uniform=1000), "param_grads": [], "variant_store": v}
    assert says in da.report(meta, [], len(XS)).split("## Variants found again in a fresh process")[1]
