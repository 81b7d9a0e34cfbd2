"""`actgen build` and `actgen.compile`: what is written, reproducibility, --check, the cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SWISH = textwrap.dedent("""\
    name: swish_beta
    formula: x * sigmoid(beta * x)
    doc: Swish with a learnable beta
    params:
      beta: {init: 1.0, per_channel: true}
    class_name: SwishBeta
    """)


def actgen(*args, cwd=ROOT, env=None, unset=()):
    """The CLI in a subprocess, with env over this process's environment, less the names in unset."""
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run([sys.executable, "-m", "actgen.cli", *args], cwd=cwd, capture_output=True, text=True, env=full)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.py"))}


def test_check_passes_on_the_committed_library():
    """(under one hash seed; the next test builds under another: the same bytes under both)"""
    r = actgen("build", "--check", env={"PYTHONHASHSEED": "12345"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_build_writes_the_committed_bytes_under_another_hash_seed(tmp_path):
    out = tmp_path / "lib"
    r = actgen("build", "specs", "--out", str(out), env={"PYTHONHASHSEED": "0"})
    assert r.returncode == 0, r.stderr
    built, committed = _tree(out), _tree(ROOT / "actgen" / "ops")
    assert built.keys() == committed.keys() and len(built) > 10
    assert {k: v for k, v in built.items() if k != "__init__.py"} == {k: v for k, v in committed.items() if k != "__init__.py"}


def test_out_writes_an_importable_package(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "swish_beta.yaml").write_text(SWISH)
    out = tmp_path / "my_acts"
    r = actgen("build", str(tmp_path / "specs"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".py") == ["__init__.py", "swish_beta.py"]
    src = (out / "swish_beta.py").read_text()
    assert "DO NOT EDIT" in src and "x * sigmoid(beta * x)" in src and "df/dbeta" in src
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        import importlib
        from my_acts import swish_beta, SwishBeta, SwishBetaFunction
        mod = importlib.import_module("my_acts.swish_beta")
        assert mod.FORMULA == "x * sigmoid(beta * x)" and len(mod.SPEC_SHA256) == 64
        assert "sympy" not in sys.modules, "generated modules must not import sympy"
        m = SwishBeta(num_channels=3)
        assert m.beta.shape == (3,) and isinstance(m.beta, torch.nn.Parameter)
        x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        m.double()
        with torch.no_grad():
            m.beta.copy_(torch.tensor([0.5, 1.0, 2.0]))
        y = m(x)
        ref = x * torch.sigmoid(m.beta.view(-1, 1) * x)
        torch.testing.assert_close(y, ref)
        assert torch.autograd.gradcheck(swish_beta, (x, m.beta.detach().clone().requires_grad_()))
        print("ok")
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "ACTGEN_BACKEND": "torch"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_check_reports_stale_output_and_writes_nothing(tmp_path):
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "swish_beta.yaml"
    spec.write_text(SWISH)
    out = tmp_path / "pkg"
    r = actgen("build", "--check", str(spec), "--out", str(out))
    assert r.returncode == 1 and not out.exists()
    assert actgen("build", str(spec), "--out", str(out)).returncode == 0
    assert actgen("build", "--check", str(spec), "--out", str(out)).returncode == 0
    before = _tree(out)
    spec.write_text(SWISH.replace("init: 1.0", "init: 1.5"))
    r = actgen("build", "--check", str(spec), "--out", str(out))
    assert r.returncode == 1 and "swish_beta" in r.stdout + r.stderr
    assert _tree(out) == before
    # a spec removed: its module is stale, and a real build removes it
    (tmp_path / "specs" / "other.yaml").write_text("name: other\nformula: x * 2\n")
    assert actgen("build", str(tmp_path / "specs"), "--out", str(out)).returncode == 0
    assert (out / "other.py").exists()
    (tmp_path / "specs" / "other.yaml").unlink()
    assert actgen("build", "--check", str(tmp_path / "specs"), "--out", str(out)).returncode == 1
    assert actgen("build", str(tmp_path / "specs"), "--out", str(out)).returncode == 0
    assert not (out / "other.py").exists()


def test_a_build_in_several_processes_is_the_build_one_by_one(tmp_path, monkeypatch):
    """Specs compiled in two processes give the files compiled one by one give; where specs
    fail to compile, the problem is the first such spec's in the specs' order (where a build
    one by one stops), and nothing is written."""
    import actgen.build as build_module
    from actgen.spec import SpecError, load_specs

    for name, formula in (("a_tanh", "tanh(x) * x"), ("b_swish", "x * sigmoid(2 * x)"), ("c_soft", "log(1 + exp(x))")):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nformula: {formula}\n")
    paths = sorted(tmp_path.glob("*.yaml"))
    specs = load_specs(paths)
    one_by_one = build_module.render_package("pkg", specs, jobs=1)
    assert build_module.render_package("pkg", specs, jobs=2) == one_by_one
    assert sorted(one_by_one) == ["__init__.py", "a_tanh.py", "b_swish.py", "c_soft.py"]
    derive = build_module.derive

    def fails_past_a(spec):     # (the workers are forked: they see this too)
        if spec.name != "a_tanh":
            raise RuntimeError(f"no form for {spec.name}")
        return derive(spec)
    monkeypatch.setattr(build_module, "derive", fails_past_a)
    for jobs in (1, 2):
        with pytest.raises(SpecError) as info:
            build_module.build(paths, tmp_path / "pkg", jobs=jobs)
        assert info.value.problems == [f"{paths[1]}:2: formula: cannot be compiled (RuntimeError: no form for b_swish)"]
        assert not (tmp_path / "pkg").exists()


def test_out_must_name_a_package(tmp_path):
    (tmp_path / "s.yaml").write_text(SWISH)
    r = actgen("build", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "not-an-identifier"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "not-an-identifier").exists()


def test_compile_from_python_and_cache_reuse_without_sympy(tmp_path):
    import actgen

    cache = tmp_path / "cache"
    os.environ["ACTGEN_CACHE_DIR"] = str(cache)
    try:
        mod = actgen.compile("x * tanh(softplus(x))", name="my_mish")
        x = torch.randn(50, dtype=torch.float64, requires_grad=True)
        torch.testing.assert_close(mod.my_mish(x), F.mish(x))
        assert isinstance(mod.MyMish(), torch.nn.Module) and hasattr(mod, "MyMishFunction")
        files = list(cache.rglob("my_mish.py"))
        assert len(files) == 1
        again = actgen.compile("x * tanh(softplus(x))", name="my_mish")
        assert again.my_mish is mod.my_mish or again.__file__ == mod.__file__
        with_params = actgen.compile("x * sigmoid(beta * x)", name="swish_b", params={"beta": 1.5})
        torch.testing.assert_close(with_params.swish_b(x), x * torch.sigmoid(1.5 * x))
        consts = actgen.compile("where(x > t, x, v)", name="thr", constants={"t": 0.5, "v": -1.0})
        torch.testing.assert_close(consts.thr(x, t=0.0, v=0.0), F.threshold(x, 0.0, 0.0))
    finally:
        del os.environ["ACTGEN_CACHE_DIR"]
    code = textwrap.dedent("""
        import sys, torch, actgen
        mod = actgen.compile("x * tanh(softplus(x))", name="my_mish")
        x = torch.linspace(-5, 5, 11)
        y = mod.my_mish(x)
        print("sympy" in sys.modules)      # before torch.testing, which imports sympy itself
        torch.testing.assert_close(y, torch.nn.functional.mish(x))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "ACTGEN_CACHE_DIR": str(cache), "ACTGEN_BACKEND": "torch"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert len(list(cache.rglob("my_mish.py"))) == 1


def test_a_compiled_module_pickles_and_loads_in_another_process(tmp_path, monkeypatch):
    """A module of a compiled formula pickles (its package, actgen_<key>, was importable by
    no name), and a model saved with torch.save loads in a fresh process that imported actgen,
    with its params, computing the same values."""
    import pickle

    import actgen

    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path / "cache"))
    m = actgen.compile("x * sigmoid(beta * x) + a*x**2", name="swa", params={"beta": {"init": 1.0, "per_channel": True},
                                                                             "a": 0.1})
    act = m.Swa(num_channels=3)
    with torch.no_grad():
        act.beta.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = torch.linspace(-3, 3, 24).reshape(2, 3, 4)
    torch.testing.assert_close(pickle.loads(pickle.dumps(act))(x), act(x), rtol=0, atol=0)
    torch.save(torch.nn.Sequential(act), tmp_path / "model.pt")
    code = textwrap.dedent(f"""
        import json, torch, actgen
        model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
        print(json.dumps(model(torch.linspace(-3, 3, 24).reshape(2, 3, 4)).flatten().tolist()))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == act(x).flatten().tolist()


def test_processes_compiling_one_formula_at_once_all_get_it(tmp_path):
    """Four processes compiling one new formula at the same moment (a multi-rank job's
    start): each builds in a folder of its own and renames it into place, the first rename
    stands.  All four got the op; before, all but one failed (the others' files looked like
    a user's to the build) and the cache held one package."""
    code = textwrap.dedent("""
        import json, sys, time, torch, actgen
        while time.time() < float(sys.argv[1]):
            time.sleep(0.001)
        m = actgen.compile("x * tanh(softplus(1.1*x))", name="pm")
        print(json.dumps(m.pm(torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)).tolist()))
        """)
    env = {**os.environ, "ACTGEN_CACHE_DIR": str(tmp_path / "cache"), "ACTGEN_BACKEND": "torch"}
    start = str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", code, start], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    x = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    want = (x * torch.tanh(F.softplus(1.1 * x))).tolist()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert json.loads(out) == pytest.approx(want, rel=1e-15)
    assert [d.name for d in (tmp_path / "cache").iterdir()] == [next((tmp_path / "cache").glob("actgen_*")).name]


def test_a_damaged_cache_entry_is_built_again(tmp_path, monkeypatch):
    """A cached module cut short, emptied, or without its __init__.py (a build killed, a
    full disk) is built again, where it was a SyntaxError or an AttributeError on every call
    since; a cache that cannot be written is an OSError that says what to do; unpickling a
    compiled formula's class with the formula not in the cache says so."""
    import importlib

    import actgen
    from actgen.compiler import _discard

    cache = tmp_path / "cache"
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(cache))
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    want = x * torch.sigmoid(2.5 * x)
    m = actgen.compile("x * sigmoid(2.5*x)", name="k1")
    pkg = Path(m.__file__).parent
    for damage in (lambda f: f.write_text(f.read_text()[:3000]), lambda f: f.write_text(""),
                   lambda f: (f.parent / "__init__.py").unlink()):
        damage(pkg / "k1.py")
        _discard_modules(pkg.name)
        m = actgen.compile("x * sigmoid(2.5*x)", name="k1")
        torch.testing.assert_close(m.k1(x), want, rtol=1e-15, atol=0)
    assert sorted(p.name for p in cache.iterdir()) == [pkg.name]
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path / "a_file"))
    with pytest.raises(OSError, match="actgen.compile: cannot write its cache at .*set ACTGEN_CACHE_DIR"):
        actgen.compile("x * sigmoid(3.5*x)", name="k2")
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path / "empty"))
    _discard(pkg)       # (and out of this process)
    with pytest.raises(ModuleNotFoundError, match="a formula actgen.compile built, not in the cache"):
        importlib.import_module(f"{pkg.name}.k1")


def _discard_modules(package: str) -> None:
    """Forget this process's import of a compiled package (as a fresh process would)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def test_compile_rejects_bad_input_with_spec_errors():
    import actgen

    with pytest.raises(actgen.SpecError, match="formula"):
        actgen.compile("__import__('os').system('true')", name="bad")
    with pytest.raises(actgen.SpecError, match="name"):
        actgen.compile("x", name="class")
    for kwargs, problem in (({"formula": b"x"}, "formula: must be a str, got bytes"),
                            ({"params": ["b"]}, "params: must be a dict with str keys, got ['b']"),
                            ({"params": {"b": "abc"}}, "params.b: must be a number, got 'abc'"),
                            ({"params": {"b": {"init": None}}}, "params.b.init: must be a number, got None"),
                            ({"constants": {"b": True}}, "constants.b: must be a number, got True"),
                            ({"inputs": "ab"}, "inputs: must be a list of names, got 'ab'")):
        kwargs = {"formula": "x * b", **kwargs}
        with pytest.raises(actgen.SpecError) as info:
            actgen.compile(kwargs.pop("formula"), name="bad", **kwargs)
        assert str(info.value) == f"<compile bad>: {problem}"
    # actgen.compile shows the compiler's own options (help() showed **kwargs), an unknown one
    # a TypeError as for any function
    import inspect

    from actgen.compiler import compile as compiler_compile
    shown = inspect.signature(actgen.compile).parameters
    assert [(p.name, p.default, p.kind) for p in shown.values()] == \
        [(p.name, p.default, p.kind) for p in inspect.signature(compiler_compile).parameters.values()]
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        actgen.compile("x", name="bad", foo=1)


def test_demo_derives_and_checks(tmp_path):
    """As the README's first command runs it: without TRITON_INTERPRET set (the demo sets it
    where there is no GPU, before anything imports triton: the compiler importing the
    runtime, which imports triton, made the kernels look for a GPU driver)."""
    r = actgen("demo", env={"ACTGEN_CACHE_DIR": str(tmp_path)}, unset=("TRITON_INTERPRET",))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "f     = x*tanh(softplus(x))" in out          # log(1 + exp(x)) rewritten
    assert "df/dbeta = x**2*sigmoid(-beta*x)*sigmoid(beta*x)" in out
    assert out.count("OK") >= 6 and "FAIL" not in out and out.rstrip().endswith("all checks passed")


def test_generated_modules_run_without_triton_and_sympy():
    """With triton and sympy unimportable, the library imports and runs on the fallback."""
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None            # import triton -> ImportError
        sys.modules["sympy"] = None             # (torch.testing imports sympy: not used here)
        import torch
        import actgen.ops as ops
        from actgen import runtime
        assert not runtime.HAS_TRITON
        x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
        m = ops.PReLU(4)
        y = ops.mish(m(x)) + ops.SwiGLU()(torch.cat([x, x], -1)) + ops.RReLU()(x)      # RReLU draws
        y.sum().backward()
        assert torch.allclose(ops.mish(x), torch.nn.functional.mish(x), rtol=1e-12, atol=1e-14)
        assert x.grad is not None and m.weight.grad.shape == (4,)
        print("ok")
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("ACTGEN_BACKEND", "TRITON_INTERPRET")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_compile_cache_key_follows_the_compiler(tmp_path, monkeypatch):
    """A change to the generator or the runtime gives a new cache entry, never a stale module."""
    import actgen
    from actgen import compiler

    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path))
    first = actgen.compile("x * 3", name="triple")
    monkeypatch.setattr(compiler, "generator_fingerprint", lambda: "another-compiler")
    second = actgen.compile("x * 3", name="triple")
    assert Path(first.__file__).parent != Path(second.__file__).parent
    assert len(list(tmp_path.rglob("triple.py"))) == 2


def test_the_package_imports_each_activation_on_first_use():
    """`import actgen.ops` imports no activation's module; a name imports its module alone;
    a submodule imported first leaves the package's attribute the functional; every name in
    __all__ and dir(); a wrong name is an AttributeError (a fresh process)."""
    code = textwrap.dedent("""
        import importlib, sys, torch
        import actgen.ops as ops
        loaded = lambda: sorted(m for m in sys.modules if m.startswith("actgen.ops."))
        assert loaded() == [], loaded()
        f = ops.silu
        assert loaded() == ["actgen.ops.silu"] and callable(f) and f.__module__ == "actgen.ops.silu"
        mod = importlib.import_module("actgen.ops.mish")         # the submodule first
        assert mod.FORMULA == "x * tanh(softplus(x))" and ops.mish is mod.mish
        from actgen.ops import Mish, SiLUFunction
        x = torch.randn(5, dtype=torch.float64)
        torch.testing.assert_close(Mish()(x), x * torch.tanh(torch.nn.functional.softplus(x)))
        assert set(ops.__all__) <= set(dir(ops)) and "GELU" in dir(ops) and "actgen.ops.gelu" not in sys.modules
        try:
            ops.no_such_activation
        except AttributeError as e:
            assert "no_such_activation" in str(e)
        else:
            raise AssertionError("no AttributeError")
        ns = {}
        exec("from actgen.ops import *", ns)
        assert all(n in ns for n in ops.__all__) and len(loaded()) == len(ops.__all__) // 3
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_generated_functions_have_no_unused_names():
    """Every name a generated function or kernel assigns is read after it: no dead code (the
    double-backward functions once kept the first derivatives' temporaries)."""
    import ast

    ops_dir = ROOT / "actgen" / "ops"
    for path in sorted(ops_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            assigned = {t.id for node in ast.walk(fn) if isinstance(node, ast.Assign)
                        for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("_t")}
            read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            assert assigned <= read, f"{path.name}:{fn.name}: unused {sorted(assigned - read)}"


def test_build_writes_the_built_in_library_only_from_all_of_specs(tmp_path):
    """Without --out a build writes actgen/ops, the built-in library, from all of specs/: a
    build of one's own specs with no --out (59 activations removed from it), or with no specs
    outside the repository root (a new ./actgen/ops that then shadowed the package), is
    refused, one line, exit 2, nothing written.  A stale package's message gives the command
    that rebuilds it."""
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "swish_beta.yaml"
    spec.write_text(SWISH)
    before = _tree(ROOT / "actgen" / "ops")
    for args, cwd in (([str(spec)], ROOT), ([str(tmp_path / "specs")], ROOT), (["specs/silu.yaml"], ROOT),
                      ([], tmp_path), ([str(spec)], tmp_path)):
        r = actgen("build", *args, cwd=cwd)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and ("--out" in r.stderr), r.stderr
        assert not (tmp_path / "actgen").exists()
    assert _tree(ROOT / "actgen" / "ops") == before
    out = tmp_path / "my_acts"
    assert actgen("build", str(spec), "--out", str(out), cwd=tmp_path).returncode == 0
    spec.write_text(SWISH.replace("init: 1.0", "init: 2.0"))
    r = actgen("build", "--check", str(spec), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 1 and f"run `actgen build {spec} --out {out}`" in r.stderr, r.stderr


def test_a_module_given_its_channels_twice_that_disagree_is_refused():
    """num_parameters is torch.nn.PReLU's name for num_channels: both, disagreeing, was 4
    channels with no word; either alone (or both alike) is that many."""
    import actgen.ops as ops

    assert ops.PReLU(num_parameters=4).weight.shape == ops.PReLU(4).weight.shape == (4,)
    assert ops.PReLU(4, num_parameters=4).weight.shape == (4,)
    for args, kwargs in (((3,), {"num_parameters": 4}), ((), {"num_channels": 3, "num_parameters": 4})):
        with pytest.raises(TypeError, match="num_channels=3 and num_parameters=4 disagree"):
            ops.PReLU(*args, **kwargs)
