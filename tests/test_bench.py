"""The benchmark suite: a CPU smoke run at tiny sizes (not a timed test), the target verdicts,
and the memory accounting the suite reports (saved-for-backward bytes, CPU peak memory)."""
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
    assert f"(the full tables: {(out / 'results.md').as_posix()})" in headline     # (this run's, not the committed ones)
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


# --------------------------------------------------------------------------------------
# Sizes a case cannot take, exact shapes, labels
# --------------------------------------------------------------------------------------


def _tiny(**kw):
    base = dict(dtypes=("fp32",), impls=("actgen", "eager"), modes=("fwd",), memory=False, latency=False,
                min_run_time=0.001, rounds=1)
    base.update(kw)
    return bench.Config.for_device("cpu", **base)


def test_a_size_a_case_cannot_take_is_skipped_and_the_run_goes_on(torch_backend):
    """--sizes 1000 with a per-channel case (64 channels) crashed building the run's description
    (Case.shape at the largest size) before the per-size skip: now that size is skipped for
    that case, logged and listed, and the other cases are measured."""
    logs = []
    res = bench.run_suite(_tiny(cases=("prelu", "relu"), sizes=(1000,)), log=logs.append)
    assert {r["case"] for r in res["timings"]} == {"relu"}
    assert all(r["n"] == 1000 and r["time_s"] > 0 for r in res["timings"])
    assert [(s["case"], s["n"]) for s in res["skipped"]] == [("prelu", 1000)]
    assert res["cases"]["prelu"]["shape_example"] is None and res["cases"]["relu"]["shape_example"] == [1000]
    assert any(m.startswith("skip prelu fp32 n=1000:") for m in logs)
    assert any("relu" in m and "n=1000:" in m for m in logs)          # not "n=2**9"
    md = bench.write_markdown(res)
    assert "## Skipped" in md and "| prelu | fp32 | 1000 |" in md
    # a size it can take is measured next to the one it cannot
    res = bench.run_suite(_tiny(cases=("prelu",), sizes=(1000, 1024)), log=lambda s: None)
    assert {r["n"] for r in res["timings"]} == {1024} and res["cases"]["prelu"]["shape_example"] == [1, 64, 16]


@pytest.mark.parametrize("n", [2 ** 26, 64 * 4097, 64 * 5000, 64 * 3 * 4096, 64 * 12289, 64, 64 * 1000])
def test_channels_first_shapes_hold_exactly_n_elements(n):
    """(n // (64 * hw), 64, hw) with hw = min(n / 64, 4096) held fewer than n elements wherever
    n / 64 is past 4096 and not a multiple of it (64 * 4097: none at all), bytes counted for n."""
    shape = bench.CASES["prelu"].shape(n)
    assert math.prod(shape) == n and shape[1] == 64
    per_channel = n // 64
    assert shape[2] == max(d for d in range(1, min(per_channel, 4096) + 1) if per_channel % d == 0)
    inputs, params, grad_out = bench.make_tensors(bench.CASES["learnable_activation"], n, torch.float32, "cpu")
    assert inputs[0].numel() == grad_out.numel() == n


def test_bytes_are_those_of_the_tensors_run(torch_backend):
    n = 64 * 5000       # 5000 rows per channel: 4096 did not divide it
    res = bench.run_suite(_tiny(cases=("prelu",), sizes=(n,), impls=("actgen",)), log=lambda s: None)
    (row,) = res["timings"]
    x, = bench.make_tensors(bench.CASES["prelu"], n, torch.float32, "cpu")[0]
    assert row["bytes"] == 2 * x.numel() * x.element_size() + 64 * 4 == 2 * n * 4 + 64 * 4
    assert res["cases"]["prelu"]["shape_example"] == list(x.shape)


def test_sizes_are_labelled_exactly():
    """200000 elements were "n=2**17" in the logs and the targets' "where"."""
    assert bench.size_label(2 ** 17) == "2**17" and bench.size_label(1) == "2**0"
    assert bench.size_label(200000) == "200000" and bench.size_label(2 ** 20 + 1) == str(2 ** 20 + 1)
    rows = [_row("mish", "actgen", 2.0, n=200000), _row("mish", "eager", 1.0, n=200000)]
    res = {"device": {"type": "cpu"}, "config": {"cases": ["mish"], "target_min_elements": 2 ** 17},
           "timings": rows, "memory": [], "latency": [], "recompiles": [], "host": []}
    t = {t["id"]: t for t in bench.evaluate_targets(res)}["cpu_fallback_speed"]
    assert t["status"] == "MISS" and t["where"] == "mish fp32 n=200000 fwdbwd"


# --------------------------------------------------------------------------------------
# --render: speed-ups, partial runs
# --------------------------------------------------------------------------------------


def _renderable(part):
    for r in part["timings"]:
        r.update(gbps=1.0, roofline_frac=0.5, roofline_time_s=1.0)
    part["cases"] = {c: {"op": c, "eager": "x", "torch": None, "layout": "flat", "shape_example": [4], "params": []}
                     for c in part["config"]["cases"]}
    part["config"].update(compile_dynamic=False, timer="t", channels=64)
    return part


def _md_row(md, heading, start):
    section = md.split(heading, 1)[1].split("\n## ", 1)[0]
    return next(line for line in section.splitlines() if line.startswith(start))


def test_render_recomputes_speedups_and_marks_a_partial_run(tmp_path):
    """--render showed '-' in the × columns (speed-ups were not computed), also across merged
    runs; a partial run read as a finished one, its targets over every activation passed."""
    a = _renderable(_part([2 ** 26], [_row("mish", "actgen", 1.0), _row("mish", "compile", 2.0)]))
    a["config"]["impls"] = ["actgen", "eager", "compile"]
    b = _renderable(_part([2 ** 26], [_row("mish", "eager", 3.0)]))
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert bench.main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m"),
                       "--no-plots"]) == 0
    md = (tmp_path / "m" / "results.md").read_text()
    row = _md_row(md, "## forward+backward, fp32", "| mish | 2**26 |").split(" | ")
    assert row[-3:] == [f"{3.0 / 1.0:.2f}×", "-", f"{2.0 / 1.0:.2f}× |"]     # × eager (other run), × torch, × compile
    targets = {t["id"]: t for t in json.loads((tmp_path / "m" / "results.json").read_text())["targets"]}
    assert targets["vs_compile"]["status"] == "PASS" and "Partial run" not in md

    b["partial"] = True
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert bench.main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "p"),
                       "--no-plots"]) == 0
    md = (tmp_path / "p" / "results.md").read_text()
    assert any(line.startswith("**Partial run**") for line in md.splitlines()[:5])
    targets = {t["id"]: t for t in json.loads((tmp_path / "p" / "results.json").read_text())["targets"]}
    # "every benchmarked activation": not passed on a run that did not measure them all
    assert targets["vs_compile"]["status"] == bench.NOT_MEASURED and "partial run" in targets["vs_compile"]["reason"]
    assert _md_row(md, "## Targets", "| fwd+bwd <= 1.05x torch.compile").split(" | ")[2] == "not judged (partial run)"
    # a target on one activation that this run measured is judged as before
    assert targets["mish_vs_eager"]["status"] == "PASS"
    # a miss the partial run measured stays a miss
    a["timings"][1]["time_s"] = 0.5
    (tmp_path / "a.json").write_text(json.dumps(a))
    assert bench.main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "q"),
                       "--no-plots"]) == 0
    targets = {t["id"]: t for t in json.loads((tmp_path / "q" / "results.json").read_text())["targets"]}
    assert targets["vs_compile"]["status"] == "MISS"


# --------------------------------------------------------------------------------------
# Bad options: one line, exit 2, nothing measured or written
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--sizes", "2**x"], "argument --sizes: '2**x' is not an element count"),
    (["--sizes", "0"], "0 is not between 1 and 2**31"),
    (["--sizes", "-5"], "is not an element count"),
    (["--sizes", "2**99"], "exponent 99 is out of range"),
    (["--out", "AFILE"], "is not a directory"),
    (["--device", "gpu"], "'gpu' is not a device"),
    (["--device", "foo"], "'foo' is not a device"),
    (["--threads", "-1"], "argument --threads: '-1' is not a whole number >= 1"),
    (["--threads", "0"], "argument --threads: '0' is not a whole number >= 1"),
    (["--rounds", "0"], "argument --rounds: '0' is not a whole number >= 1"),
    (["--rounds", "-3"], "argument --rounds: '-3'"),
    (["--prewarm", "-1"], "argument --prewarm: '-1' is not a whole number >= 0"),
    (["--compile-backend", "nosuch"], "'nosuch' is not a torch.compile backend"),
    (["--latency-cases", "nosuch"], "argument --latency-cases: invalid choice: 'nosuch'"),
    (["--min-run-time", "0"], "argument --min-run-time: '0'"),
    (["--min-run-time", "-1"], "argument --min-run-time: '-1'"),
    (["--rep-ms", "0"], "argument --rep-ms: '0'"),
    (["--sizes", "2**32"], "is not between 1 and 2**31"),
    (["--sizes", "3000000000"], "is not between 1 and 2**31"),
    (["--out", "LONG"], "cannot create it"),
    (["--render", "MISSING"], "cannot read it"),
    (["--render", "NOTJSON"], "not JSON"),
    (["--render", "NOKEYS"], "not a results.json of actgen bench (no config"),
    (["--render", "GOOD", "--out", "AFILE"], "is not a directory"),
])
def test_cli_bad_options_are_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
    """Each was a traceback (--sizes 0 after the whole run), a run that measured and then
    failed, or a silent misuse."""
    from actgen.cli import main

    monkeypatch.setattr(bench, "run_suite", lambda *a, **k: pytest.fail("measured despite a bad option"))
    files = {"AFILE": tmp_path / "afile", "MISSING": tmp_path / "missing.json", "NOTJSON": tmp_path / "notjson.json",
             "NOKEYS": tmp_path / "nokeys.json", "GOOD": tmp_path / "good.json",
             "LONG": tmp_path / ("x" * 300) / "out"}
    files["AFILE"].write_text("")
    files["NOTJSON"].write_text("results {")
    files["NOKEYS"].write_text(json.dumps({"device": {"type": "cpu"}, "timings": []}))
    files["GOOD"].write_text(json.dumps(_renderable(_part([2 ** 26], [_row("mish", "actgen", 1.0)]))))
    before = sorted(p.name for p in tmp_path.iterdir())
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    args = [str(files[a]) if a in files else a for a in args]
    try:
        code = main(["bench", "relu", "--device", "cpu", "--impls", "actgen", "--modes", "fwd", "--no-latency",
                     "--no-memory", *out, *args])
    except SystemExit as exc:       # argparse's own error path
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("actgen bench: error:", "python -m actgen.bench: error:")) and message in last, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before         # nothing written
    assert files["AFILE"].read_text() == ""


# --------------------------------------------------------------------------------------
# Writers: plots kept, runs without actgen, titles, disturbed rooflines
# --------------------------------------------------------------------------------------


def test_no_plots_leaves_existing_plots_alone(smoke, tmp_path):
    res, _, _ = smoke
    old = tmp_path / "gbps_fp32_fwd.png"
    old.write_bytes(b"an earlier run's plot")
    stale = tmp_path / "gbps_fp16_fwd.png"
    stale.write_bytes(b"a dtype this run did not measure")
    bench.write_results(res, tmp_path, plots=False)
    assert old.read_bytes() == b"an earlier run's plot" and stale.is_file()
    bench.write_results(res, tmp_path, plots=True)          # a run that plots replaces them
    assert old.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not stale.exists()


def test_a_run_without_actgen_writes_its_tables_and_plots(tmp_path, torch_backend):
    """--impls eager torch measured, then wrote empty tables and no plots (rows and plots were
    picked by actgen's rows)."""
    res = bench.run_suite(_tiny(cases=("silu",), sizes=(2 ** 10,), impls=("eager", "torch")), log=lambda s: None)
    paths = bench.write_results(res, tmp_path)
    md = (tmp_path / "results.md").read_text()
    times = {r["impl"]: r for r in res["timings"]}
    assert set(times) == {"eager", "torch"}
    cells = _md_row(md, "## forward, fp32", "| silu | 2**10 |").strip(" |").split(" | ")
    # activation, n, roofline, eager, torch, × eager, × torch, × compile
    assert cells[2] == bench._fmt_time(times["eager"]["roofline_time_s"])
    assert cells[3].startswith(bench._fmt_time(times["eager"]["time_s"]) + " (")
    assert cells[4].startswith(bench._fmt_time(times["torch"]["time_s"]) + " (")
    assert cells[5:] == ["-", "-", "-"]
    assert tmp_path / "gbps_fp32_fwd.png" in paths and (tmp_path / "gbps_fp32_fwd.png").is_file()


@pytest.mark.parametrize("cases", [["silu"], ["silu", "swiglu"], list(SMOKE_CASES)])
def test_plot_titles_fit_their_figures(smoke, cases):
    """With one or two activations the suptitle (device name, date) was wider than the figure."""
    res, _, _ = smoke
    res = {**res, "config": {**res["config"], "cases": cases},
           "device": {**res["device"], "name": res["device"]["name"] + " with a long name to make the title wide"}}
    fig = bench._plot_figure(res, "fp32", "fwd")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    for ax in fig.axes:
        if ax.get_visible() and ax.axison:
            assert ax.title.get_window_extent(renderer).y1 <= box.y0 + 1      # no overlap with the panels
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_roofline_is_timed_in_the_rounds_and_a_disturbed_one_is_flagged(monkeypatch, torch_backend):
    """The roofline kernels were timed once, on their own: one disturbed measurement (here the
    first copy, 1000x slow) made every fraction of that size nonsense.  Now they are timed in
    each round with the implementations and the median round kept; what still comes out far
    above the roofline is flagged, not printed as fact."""
    calls = []

    def fake_time_fn(fn, device, **kw):
        kind = getattr(fn, "roofline", None)
        calls.append(kind or "impl")
        if kind == "copy" and calls.count("copy") == 1:
            return 1.0
        return 1e-3 if kind else 2e-3

    def fake_time_backward(setup, fn, device, **kw):
        calls.append("impl")
        return 2e-3

    monkeypatch.setattr(bench, "time_fn", fake_time_fn)
    monkeypatch.setattr(bench, "time_backward", fake_time_backward)
    n = 2 ** 10
    res = bench.run_suite(_tiny(cases=("silu",), sizes=(n,), impls=("actgen",), modes=("fwd", "bwd"), rounds=3),
                          log=lambda s: None)
    rounds = [calls[i * 4:(i + 1) * 4] for i in range(3)]
    assert len(calls) == 12 and all(sorted(r) == ["bwd", "copy", "impl", "impl"] for r in rounds)
    roof = {r["kind"]: r for r in res["rooflines"]}
    assert roof["copy"]["round_times_s"] == [1.0, 1e-3, 1e-3] and roof["copy"]["time_s"] == 1e-3
    rows = {r["mode"]: r for r in res["timings"]}
    # silu moves 2n floats forward at the copy's 2n floats per 1e-3 s, 3n backward at add's
    assert rows["fwd"]["roofline_frac"] == pytest.approx((2 * n * 4 / (2 * n * 4 / 1e-3)) / 2e-3)
    assert rows["bwd"]["roofline_frac"] == pytest.approx((3 * n * 4 / (3 * n * 4 / 1e-3)) / 2e-3)
    assert "†" not in bench.write_markdown({**res, "targets": []})

    calls.clear()       # one round: the disturbed copy is all there is, so it is flagged
    res = bench.run_suite(_tiny(cases=("silu",), sizes=(n,), impls=("actgen",), modes=("fwd",), rounds=1),
                          log=lambda s: None)
    (row,) = res["timings"]
    assert row["roofline_frac"] == pytest.approx(1.0 / 2e-3)
    md = bench.write_markdown(res)
    assert "%†" in _md_row(md, "## forward, fp32", "| silu | 2**10 |") and "timing was disturbed" in md
    assert "%†" in _md_row(md, "## Headline", "| silu |") or "| silu | - |" in md


# --------------------------------------------------------------------------------------
# Cases of any spec: built-in ops without a case of their own, the user's specs
# --------------------------------------------------------------------------------------


def _leaf(t):
    return t.detach().requires_grad_()


@pytest.mark.parametrize("name, reference", [
    ("celu", lambda x: torch.nn.functional.celu(x)),
    ("hardtanh", lambda x: torch.nn.functional.hardtanh(x)),
    ("selu", lambda x: torch.nn.functional.selu(x)),
    ("logsigmoid", lambda x: torch.nn.functional.logsigmoid(x)),
    ("rrelu", lambda x: torch.nn.functional.rrelu(x, training=False)),      # a draw at its mean
])
def test_a_built_in_op_is_timed_against_its_formula_as_written(name, reference):
    """Any built-in op is a case: eager (and torch.compile) run its formula as written in plain
    torch, which gives torch's own values and, through autograd, its gradients; the op timed is
    actgen.ops' own."""
    import actgen.ops

    case = bench.resolve_cases([name])[name]
    assert case.builtin is None and case.layout == "flat"
    x = _leaf(torch.linspace(-30, 30, 2001, dtype=torch.float64))
    xr = _leaf(x)
    y, yr = case.eager(x), reference(xr)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(yr)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(yr, xr, g)[0])
    assert case.actgen_fn() is getattr(actgen.ops, name)


def _user_specs(folder):
    folder.mkdir()
    (folder / "my_prelu.yaml").write_text("name: my_prelu\nformula: Max(x, 0) + w * Min(x, 0)\n"
                                          "params:\n  w: {init: 0.25, per_channel: true}\n")
    (folder / "my_gate.yaml").write_text("name: my_gate\ninputs: [a, b]\nformula: a * sigmoid(k * a) * b\n"
                                         "constants:\n  k: 1.0\n")
    return folder


def test_a_spec_of_your_own_is_a_case(tmp_path):
    """--spec: a per-channel param runs against a channels-first input, as torch's F.prelu takes
    it; a gated spec has its two inputs; constants take their defaults."""
    cases = bench.resolve_cases([], [_user_specs(tmp_path / "specs")])
    assert list(cases) == ["my_gate", "my_prelu"]
    prelu, gate = cases["my_prelu"], cases["my_gate"]
    assert prelu.layout == "channels_first" and prelu.params == (("w", True, 0.25),)
    x = _leaf(torch.randn(prelu.shape(64 * 32), dtype=torch.float64))
    w = _leaf(torch.rand(64, dtype=torch.float64))
    xr, wr = _leaf(x), _leaf(w)
    y, yr = prelu.eager(x, w), torch.nn.functional.prelu(xr, wr)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(yr)
    for a, b in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(yr, (xr, wr), g)):
        torch.testing.assert_close(a, b)
    a, b = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    assert gate.n_inputs == 2 and gate.params == ()
    torch.testing.assert_close(gate.eager(a, b), torch.nn.functional.silu(a) * b)
    x32 = torch.randn(prelu.shape(64 * 32))
    torch.testing.assert_close(prelu.actgen_fn()(x32, w.detach().float()), torch.nn.functional.prelu(x32, w.detach().float()))


def test_cli_benchmarks_a_spec_of_your_own(tmp_path, torch_backend):
    """`actgen bench --spec DIR`: its ops are timed (and nothing else); results.json names each
    one's spec and formula; --list names every built-in op."""
    from actgen.cli import main

    specs, out = _user_specs(tmp_path / "specs"), tmp_path / "out"
    assert main(["bench", "--spec", str(specs), "--device", "cpu", "--dtype", "fp32", "--sizes", "2**12",
                 "--impls", "actgen", "eager", "--modes", "fwdbwd", "--rounds", "1", "--min-run-time", "0.001",
                 "--no-latency", "--no-memory", "--no-plots", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["cases"]) == {"my_gate", "my_prelu"}
    assert res["cases"]["my_prelu"]["formula"] == "Max(x, 0) + w * Min(x, 0)"
    assert res["cases"]["my_prelu"]["spec"].endswith("my_prelu.yaml")
    assert {(r["case"], r["impl"]) for r in res["timings"] if r.get("time_s", 0) > 0} == {
        (c, i) for c in ("my_gate", "my_prelu") for i in ("actgen", "eager")}
    assert main(["bench", "--list"]) == 0


@pytest.mark.parametrize("text, message", [
    ("name: bad\nformula: x * tanh(\n", ":2: formula: syntax error at column 9"),
    ("name: mish\nformula: x * tanh(softplus(x))\n", "name: 'mish' is a built-in case's name"),
])
def test_cli_a_bad_spec_is_refused_before_anything_runs(text, message, tmp_path, capsys, monkeypatch):
    from actgen.cli import main

    monkeypatch.setattr(bench, "run_suite", lambda *a, **k: pytest.fail("measured despite a bad spec"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main(["bench", "--spec", str(spec), "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and err.startswith(str(spec))
    assert not (tmp_path / "out").exists()
