"""The benchmark suite: a CPU smoke run at tiny sizes (not a timed test), the target verdicts,
and the memory accounting the suite reports (saved-for-backward bytes, CPU peak memory)."""
import contextlib
import json
import math

import pytest
import torch

from actgen import bench

SMOKE_CASES = ("silu", "swiglu", "prelu")
SIZES = (2 ** 10, 2 ** 12)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of the whole suite on CPU through the command line, tiny sizes."""
    out = tmp_path_factory.mktemp("bench")
    # torch.compile through AOTAutograd without inductor's code generation: the same code path, fast
    cfg = bench.Config.for_device("cpu", cases=SMOKE_CASES, dtypes=("fp32",), sizes=SIZES, min_run_time=0.002,
                                  latency_cases=("silu",), latency_impls=("actgen",), compile_backend="aot_eager")
    results = bench.run_suite(cfg, log=lambda s: None)
    bench.write_results(results, out)
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), out


def test_smoke_json_structure(smoke):
    res, _, _ = smoke
    assert res["schema"] == bench.SCHEMA
    dev = res["device"]
    assert dev["type"] == "cpu" and dev["name"] and dev["date"] and dev["torch"] == torch.__version__
    assert res["config"]["cases"] == list(SMOKE_CASES) and res["config"]["sizes"] == list(SIZES)
    got = {(r["case"], r["impl"], r["n"], r["mode"]) for r in res["timings"]}
    for case in SMOKE_CASES:
        impls = ["actgen", "eager", "compile"] + (["torch"] if bench.CASES[case].builtin else [])
        for impl in impls:
            for n in SIZES:
                for mode in ("fwd", "bwd", "fwdbwd"):
                    assert (case, impl, n, mode) in got, (case, impl, n, mode)
        if bench.CASES[case].params:
            assert all((case, "actgen", n, "bwd_frozen") in got for n in SIZES)
    for r in res["timings"]:
        assert "error" not in r, r
        assert r["time_s"] > 0 and r["gbps"] > 0 and r["roofline_frac"] > 0 and r["bytes"] > 0
        if r["impl"] == "actgen" and r["mode"] != "bwd_frozen":
            assert set(r["speedup"]) >= {"eager", "compile"}
    assert {(r["n"], r["kind"]) for r in res["rooflines"]} == {(n, k) for n in SIZES for k in ("copy", "bwd")}
    mem = {(m["case"], m["impl"], m["n"]) for m in res["memory"]}
    assert all((c, "actgen", n) in mem for c in SMOKE_CASES for n in SIZES)
    assert all(m["peak_bytes"] > 0 for m in res["memory"])
    lat = {(r["case"], r["impl"], r["cache"]): r for r in res["latency"]}
    assert set(lat) == {("silu", "actgen", "cold"), ("silu", "actgen", "warm")}
    for r in lat.values():
        assert "error" not in r, r
        assert r["first_call_s"] > 0 and r["import_s"] > 0 and len(r["shape_calls_s"]) == 3
    assert {r["impl"] for r in res["host"]} == {"actgen", "torch", "eager"}


def test_smoke_targets_never_pass_without_data(smoke):
    res, _, _ = smoke
    targets = {t["id"]: t for t in res["targets"]}
    assert set(targets) >= {"bw_fwd", "bw_bwd", "param_grad_cost", "prelu_vs_torch", "vs_compile", "mish_vs_eager",
                            "swiglu_vs_silu_mul", "saved_bytes", "swiglu_peak_memory", "first_call_warm",
                            "first_call_cold_vs_compile", "no_recompile", "host_time", "cpu_fallback_speed"}
    for t in targets.values():
        assert t["status"] in ("PASS", "MISS", bench.NOT_MEASURED)
        if t["scope"] == "gpu":     # a CPU run measures no GPU target
            assert t["status"] == bench.NOT_MEASURED and t["reason"]
        if t["status"] != bench.NOT_MEASURED:
            assert t["checked"] > 0 and "value" in t
    # sizes below the CPU target's threshold: no data, so not measured rather than a pass
    assert targets["cpu_fallback_speed"]["status"] == bench.NOT_MEASURED
    # device-independent and measured here: the generated ops save only inputs and params
    assert targets["saved_bytes"]["status"] == "PASS"
    assert targets["saved_bytes"]["checked"] == len(SMOKE_CASES) * len(SIZES)


def test_smoke_markdown_and_plots(smoke):
    res, md, out = smoke
    assert md.startswith("# actgen benchmark: cpu")
    assert res["device"]["name"] in md and res["device"]["date"] in md
    for heading in ("## Headline", "## Targets", "## forward+backward, fp32", "## Roofline kernels",
                    "## Memory of a training step", "## First-call latency", "## Host time per call"):
        assert heading in md, heading
    assert "| activation | actgen fwd+bwd | GB/s | of roofline |" in md
    assert md.count("not measured") >= 10
    for case in SMOKE_CASES:
        assert f"| {case} |" in md
    headline = (out / "headline.md").read_text()
    assert res["device"]["date"] in headline and "| target | status |" in headline
    for mode in ("fwd", "bwd", "fwdbwd", "bwd_frozen"):
        png = out / f"gbps_fp32_{mode}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tuned_launch_configs_are_reported(smoke):
    res, md, _ = smoke
    assert res["launch_configs"] == [] and "## Tuned launch configs" not in md     # CPU: nothing tuned
    row = {"kernel": "silu._forward_kernel", "dtype": "bfloat16", "layout": "flat", "bucket": "2**26",
           "tile": 2048, "num_warps": 8, "ms": {"1024x4": 0.31, "2048x8": 0.27}}
    md = bench.write_markdown({**res, "launch_configs": [row]})
    assert "## Tuned launch configs" in md
    assert "| silu._forward_kernel | bfloat16 | flat | 2**26 | 2048x8 | 1024x4: 0.31, 2048x8: 0.27 |" in md


def test_a_stepping_launch_config_is_reported_as_one(monkeypatch, smoke):
    """A param-gradient backward's chosen config may step through the tiles: the table says
    so (1024x4-step, not 1024x4, where the two took 0.106 and 0.2 ms)."""
    res, _, _ = smoke
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU X")
    table = {"GPU X|triton 3.6.0|actgen.ops.prelu._backward_kernel@0123456789ab|bfloat16|cols+param_grad|2**26":
             {"tile": 1024, "num_warps": 4, "step": True, "ms": {"1024x4": 0.2, "1024x4-step": 0.1057}},
             "GPU Y|triton 3.6.0|actgen.ops.prelu._backward_kernel@0123456789ab|bfloat16|cols|2**26":
             {"tile": 2048, "num_warps": 8, "ms": {"2048x8": 0.098}}}
    monkeypatch.setattr(bench.TUNER, "_table", table)
    rows = bench.launch_configs(torch.device("cuda"))
    assert [(r["kernel"], r["step"]) for r in rows] == [("prelu._backward_kernel", True)]
    md = bench.write_markdown({**res, "launch_configs": rows})
    assert "| prelu._backward_kernel | bfloat16 | cols+param_grad | 2**26 | 1024x4-step | 1024x4: 0.2, 1024x4-step: 0.1057 |" in md


def _fake_results(device, rows, memory=()):
    res = {"device": {"type": device}, "config": {"cases": ["mish", "swiglu"], "target_min_elements": 2 ** 26},
           "timings": rows, "memory": list(memory), "latency": [], "recompiles": [], "host": []}
    return {t["id"]: t for t in bench.evaluate_targets(res)}


def _row(case, impl, t, mode="fwdbwd", n=2 ** 26, dtype="fp32"):
    return {"case": case, "impl": impl, "dtype": dtype, "n": n, "mode": mode, "time_s": t}


def test_target_verdicts():
    rows = [_row("mish", "actgen", 1.0), _row("mish", "eager", 3.0),
            _row("swiglu", "actgen", 1.0), _row("swiglu", "torch", 1.5),
            _row("mish", "actgen", 1.0, n=2 ** 20), _row("mish", "eager", 1.0, n=2 ** 20)]   # below the target size
    t = _fake_results("cuda", rows)
    assert t["mish_vs_eager"]["status"] == "PASS" and t["mish_vs_eager"]["value"] == pytest.approx(3.0)
    assert t["mish_vs_eager"]["checked"] == 1
    assert t["swiglu_vs_silu_mul"]["status"] == "MISS" and t["swiglu_vs_silu_mul"]["misses"]
    # no data: not measured, never a pass
    for tid in ("bw_fwd", "bw_bwd", "param_grad_cost", "prelu_vs_torch", "vs_compile", "swiglu_peak_memory",
                "first_call_warm", "no_recompile", "host_time"):
        assert t[tid]["status"] == bench.NOT_MEASURED, tid
    assert t["cpu_fallback_speed"]["status"] == bench.NOT_MEASURED   # a CPU target, on a CUDA run
    # the same numbers on a CPU run: GPU targets are not measured
    t = _fake_results("cpu", rows)
    assert t["mish_vs_eager"]["status"] == bench.NOT_MEASURED
    # a generated op saving anything but its inputs is a miss
    mem = [{"case": "mish", "impl": "actgen", "dtype": "fp32", "n": 2 ** 10, "saved_bytes": 8192,
            "expected_saved_bytes": 4096, "saved_only_inputs": False, "peak_bytes": 1}]
    assert _fake_results("cpu", [], mem)["saved_bytes"]["status"] == "MISS"


@pytest.mark.parametrize("name", ["mish", "prelu", "prelu_cl", "swiglu", "learnable_activation", "adaptive_mixture"])
def test_saved_for_backward_is_inputs_and_params(name, torch_backend):
    case = bench.CASES[name]
    inputs, params, _ = bench.make_tensors(case, 2 ** 12, torch.float32, "cpu")
    leaves = [t.requires_grad_(True) for t in (*inputs, *params)]
    expected = sum(t.numel() * t.element_size() for t in leaves)
    expected_inputs_only = 4 * 2 ** 12 * case.n_inputs
    assert expected > expected_inputs_only or not case.params
    got = bench.saved_for_backward(case.actgen_fn(), leaves)
    assert got["bytes"] == expected and got["count"] == len(leaves) and got["only_inputs"]


def test_saved_for_backward_counts_intermediates():
    """The hook sees what autograd saves, not just the inputs: the composite mish saves temporaries."""
    x = torch.randn(2 ** 12, requires_grad=True)
    got = bench.saved_for_backward(bench.CASES["mish"].eager, [x])
    assert got["bytes"] >= 2 * x.numel() * 4 and not got["only_inputs"]


def test_cpu_peak_memory_accounting():
    n = 2 ** 20

    def step():
        a = torch.empty(n)          # 4 MiB, freed before b
        del a
        b = torch.empty(2 * n)      # 8 MiB, returned (alive at the end)
        return b

    peak = bench.peak_memory(step, torch.device("cpu"))
    assert 8 * 2 ** 20 <= peak < 8 * 2 ** 20 + 2 ** 16


def test_traffic_model():
    es = 4
    n = 2 ** 20
    silu, swiglu, prelu = bench.CASES["silu"], bench.CASES["swiglu"], bench.CASES["prelu"]
    assert bench.traffic(silu, n, torch.float32, "fwd") == {"copy": 2 * n * es}
    assert bench.traffic(silu, n, torch.float32, "bwd") == {"bwd": 3 * n * es}
    assert bench.traffic(swiglu, n, torch.float32, "fwdbwd") == {"copy": 3 * n * es, "bwd": 5 * n * es}
    assert bench.traffic(prelu, n, torch.float32, "bwd") == {"bwd": 3 * n * es + 2 * 64 * es}
    assert bench.traffic(prelu, n, torch.float32, "bwd_frozen") == {"bwd": 3 * n * es + 64 * es}
    assert bench.CASES["prelu"].shape(2 ** 26) == (256, 64, 4096)
    assert bench.CASES["prelu_cl"].shape(2 ** 26) == (2 ** 20, 64)
    assert bench.parse_size("2**16") == 65536 == bench.parse_size("1<<16") == bench.parse_size("65536")
    assert math.log2(max(bench.GPU_SIZES)) == 28 and math.log2(min(bench.GPU_SIZES)) == 16


def test_cli_list(capsys):
    from actgen.cli import main

    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in bench.DEFAULT_CASES)
    assert main(["bench", "no_such_op", "--device", "cpu"]) == 2


@pytest.mark.parametrize("args, message", [
    (["--sizes", "2**x"], "argument --sizes: '2**x' is not an element count"),
    (["--sizes", "0"], "0 is not between 1 and 2**34"),
    (["--sizes", "-5"], "is not an element count"),
    (["--sizes", "2**99"], "exponent 99 is out of range"),
    (["--out", "AFILE"], "AFILE is not a directory"),
])
def test_cli_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    """Bad sizes or an --out that is a file: a one-line error and exit status 2 before
    anything runs (they were tracebacks, --sizes 0 after the whole run)."""
    from actgen.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    args = [str(afile) if a == "AFILE" else a for a in args]
    with pytest.raises(SystemExit) if args[0] == "--sizes" else contextlib.nullcontext():
        assert main(["bench", "relu", "--device", "cpu", "--impls", "actgen", "--modes", "fwd", "--no-plots",
                     "--no-latency", "--no-memory", *args]) == 2
    err = capsys.readouterr().err
    assert message.replace("AFILE", str(afile)) in err and "Traceback" not in err
    assert afile.read_text() == ""


def _part(sizes, rows, name="NVIDIA H200"):
    return {"device": {"type": "cuda", "name": name, "date": "2026-01-01 00:00 UTC", "torch": "2", "python": "3"},
            "config": {"cases": sorted({r["case"] for r in rows}), "dtypes": ["fp32"], "sizes": list(sizes),
                       "impls": ["actgen", "eager"], "modes": ["fwdbwd"], "target_min_elements": 2 ** 26},
            "cases": {}, "rooflines": [], "timings": rows, "memory": [], "latency": [], "recompiles": [], "host": [],
            "elapsed_s": 10.0}


def test_runs_merge_into_one():
    """Two runs at different sizes make one table; a number measured twice comes from the last run."""
    a = _part([2 ** 26], [_row("mish", "actgen", 1.0), _row("mish", "eager", 3.0)])
    b = _part([2 ** 20, 2 ** 26], [_row("mish", "actgen", 2.0, n=2 ** 20), _row("mish", "actgen", 0.5)])
    merged = bench.merge_results([a, b])
    assert merged["config"]["sizes"] == [2 ** 20, 2 ** 26] and merged["elapsed_s"] == 20.0
    times = {(r["impl"], r["n"]): r["time_s"] for r in merged["timings"]}
    assert times == {("actgen", 2 ** 26): 0.5, ("eager", 2 ** 26): 3.0, ("actgen", 2 ** 20): 2.0}
    verdicts = {t["id"]: t for t in bench.evaluate_targets(merged)}
    assert verdicts["mish_vs_eager"]["value"] == pytest.approx(6.0)     # 3.0 / 0.5, across the two runs
    with pytest.raises(ValueError):
        bench.merge_results([a, _part([2 ** 28], [], name="NVIDIA H100")])


def test_a_run_leaves_its_numbers_as_it_goes(torch_backend):
    """run_suite hands its results so far to checkpoint after every activation and dtype."""
    seen = []
    cfg = bench.Config.for_device("cpu", cases=("relu", "silu"), dtypes=("fp32",), sizes=(2 ** 10,),
                                  impls=("actgen", "eager"), modes=("fwd",), memory=False, latency=False,
                                  min_run_time=0.001)
    bench.run_suite(cfg, log=lambda s: None, checkpoint=lambda r: seen.append(
        (r["partial"], sorted({t["case"] for t in r["timings"]}))))
    assert seen == [(True, ["relu"]), (True, ["relu", "silu"])]


def test_render_merges_several_runs(tmp_path):
    a = _part([2 ** 26], [_row("mish", "actgen", 1.0), _row("mish", "eager", 3.0)])
    b = _part([2 ** 28], [_row("mish", "actgen", 4.0, n=2 ** 28), _row("mish", "eager", 8.0, n=2 ** 28)])
    for name, part in (("a.json", a), ("b.json", b)):
        for r in part["timings"]:
            r.update(gbps=1.0, roofline_frac=0.5, roofline_time_s=1.0)
        part["cases"] = {"mish": {"op": "mish", "eager": "x", "torch": None, "layout": "flat", "shape_example": [4],
                                  "params": []}}
        part["config"].update(compile_dynamic=False, timer="t", channels=64)
        (tmp_path / name).write_text(json.dumps(part))
    assert bench.main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m"),
                       "--no-plots"]) == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["config"]["sizes"] == [2 ** 26, 2 ** 28] and merged["merged_runs"] == 2
    assert "2**28" in (tmp_path / "m" / "results.md").read_text()


def test_prewarm_runs_everything_first_in_other_processes(monkeypatch, tmp_path):
    """--prewarm: the run's callables are run once in worker processes before anything is
    timed (their compiled kernels land in the on-disk caches); a failing one is logged, not raised."""
    monkeypatch.setenv("ACTGEN_TUNING_CACHE", str(tmp_path / "tuning.json"))   # _prewarm_task sets it
    logs = []
    cfg = bench.Config.for_device("cpu", cases=("relu",), dtypes=("fp32",), sizes=(2 ** 8,), impls=("actgen",),
                                  modes=("fwd", "fwdbwd"), memory=False, latency=False, min_run_time=0.001, prewarm=1)
    results = bench.run_suite(cfg, log=logs.append)
    assert results["prewarm_s"] > 0 and any(m.startswith("prewarm: 1 activation/dtype/size runs") for m in logs)
    assert bench._prewarm_task(dict(case="relu", dtype="fp32", n=100, device="cpu", impls=["actgen"], modes=["fwd"],
                                    compile_dynamic=True, compile_backend="inductor",
                                    tuning_cache=str(tmp_path / "t.json"))) is None
    assert "relu" in bench._prewarm_task(dict(case="relu", dtype="fp32", n=100, device="nowhere", impls=["actgen"],
                                              modes=["fwd"], compile_dynamic=True, compile_backend="inductor",
                                              tuning_cache=str(tmp_path / "t.json")))


def test_param_grad_profile_smoke(tmp_path, torch_backend):
    """benchmarks/param_grad_profile.py (a stage of the GPU pass) runs on CPU at a tiny size and
    reports both states of every case asked for, and the ops of the largest size's backwards."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "param_grad_profile.py"
    spec = importlib.util.spec_from_file_location("param_grad_profile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "param_grads.txt"
    assert mod.main(["--device", "cpu", "--cases", "prelu_cl", "polynomial", "--sizes", "256", "--out", str(out)]) == 0
    text = out.read_text()
    for name in ("prelu_cl", "polynomial"):
        assert f"== {name} (" in text
    rows = [line for line in text.splitlines() if "backward (events, as the suite)" in line]
    assert [r.split()[0] for r in rows] == ["params", "frozen"] * 2
    assert all(float(r.split("suite)")[1].split()[0]) > 0 for r in rows)
    assert text.count("-- ops of three backwards") == 4 and "_EagerFunctionBackward" in text
