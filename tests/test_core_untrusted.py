"""Hostile and odd specs: every one a clean `path:line: field: problem` error or a working op.

The cases are the kinds a random search over specs turned up: YAML that nests into a cycle,
numbers no float holds, constants that are not real, conditions sympy cannot decide, formulas
whose limits take exact arithmetic forever, and constants that make the generated code's
float arithmetic raise.  The ops that build are checked against the formula as plain torch
(tests/_reference.py), and must give NaN or inf where torch does, never an exception.
"""
import importlib
import math
import subprocess
import sys

import pytest
import torch

from actgen import runtime as rt
from actgen.build import build
from actgen.spec import SpecError, load_spec

from _reference import reference_call


@pytest.mark.parametrize("text, expected", [
    ("name: a\nformula: x * q\nparams: &a {p: *a}\n", "s.yaml:3: spec: YAML aliases (*name) are not supported"),
    ("name: a\nformula: x\nparams: {p: &i 1.0}\nconstants: {c: *i}\n", "s.yaml:4: spec: YAML aliases"),
    ("name: a\nformula: x\ndoc: " + "[" * 40 + "]" * 40 + "\n", "s.yaml:3: spec: nested deeper than 16 levels"),
    ("name: a\nformula: x * p\nparams: {p: 1" + "0" * 400 + "}\n", "s.yaml:3: params.p: must be a finite number"),
    ("name: a\nformula: max(sqrt(-1), x)\n", "s.yaml:2: formula: the constant I is not a real number"),
    ("name: a\nformula: where(sqrt(-2) > 0, x, 0)\n", "s.yaml:2: formula: the constant sqrt(2)*I is not a real number"),
    ("name: a\nformula: Max(log(-6.5), x)\n", "is not a real number"),
    ("name: a\nformula: x\ndoc: \"red \\x1b[31m text\"\n", "s.yaml:3: doc: holds the control character U+001B (text, line breaks and tabs only)"),
    ("name: a\nformula: where(log(0) < 1, x, 0)\n", "s.yaml:2: formula: a constant here is infinite or undefined (a division by zero, or the log of 0?)"),
    ("name: a\nformula: x + sigmoid(sinh(1e300))\n", "number 1e+300 is beyond float32's range"),
    ("name: a\nformula: x + sigmoid(sinh(1e30))\n", "is beyond float32's range"),
    ("name: a\nformula: x * exp(100)\n", "the constant exp(100) is beyond float32's range"),
    ("name: a\nformula: x + 1e39\n", "number 1e+39 is beyond float32's range"),
    ("name: a\nformula: x * c\nconstants: {c: -1.0e+39}\n", "s.yaml:3: constants.c: -1e+39 is beyond float32's range"),
    ("name: a\nformula: where(Min(2, uniform(0, 1)) < 1, x, 2*x)\n", "where(...) of these arguments cannot be built"),
    ("name: a\nformula: Max(x, Min(c, -2)**(1/3))\nconstants: {c: 1.0}\n", "Max(...) of these arguments cannot be built"),
    ("name: " + "a" * 300 + "\nformula: x\n", "s.yaml:1: name: 'aaaaaaaaaaaaaaaa...' is 300 characters long; the limit is 64"),
    ("name: a\nformula: x * " + "b" * 65 + "\nconstants: {" + "b" * 65 + ": 1.0}\n", "s.yaml:3: constants: 'bbbbbbbbbbbbbbbb...' is 65"),
    ("name: a\nformula: x * ACC\nconstants: {ACC: 0.5}\n", "s.yaml:3: constants: 'ACC' collides with a reserved name"),
    ("name: a\nformula: x * CH_AXIS\nparams: {CH_AXIS: 0.5}\n", "s.yaml:3: params: 'CH_AXIS' collides with a reserved name"),
    ("name: a\nformula: x * forward\nparams: {forward: 0.5}\n", "s.yaml:3: params: 'forward' is an attribute of torch.nn.Module"),
    ("name: a\nformula: x * train\nconstants: {train: 0.5}\n", "s.yaml:3: constants: 'train' is an attribute of torch.nn.Module"),
    ("name: a\nformula: max(" + ", ".join(f"x*{i}" for i in range(1, 13)) + ")\n", "Max takes 2 to 8 arguments, got 12"),
    ("name: a\nformula: x*p0\nparams: {" + ", ".join(f"p{i}: 1.0" for i in range(65)) + "}\n",
     "s.yaml:3: params: 65 params and 0 constants; the limit is 64 together"),
    # Triton's launch keywords: a kernel argument of that name was given twice at launch
    ("name: a\nformula: x * num_warps + x\nconstants: {num_warps: 0.5}\n", "s.yaml:3: constants: 'num_warps' collides"),
    ("name: a\nformula: x * debug\nparams: {debug: 0.5}\n", "s.yaml:3: params: 'debug' collides with a reserved"),
    ("name: a\nformula: x * enable_fp_fusion\nconstants: {enable_fp_fusion: 1.0}\n", "'enable_fp_fusion' collides"),
    ("name: a\nformula: x * 2\nclass_name: FORMULA\n", "s.yaml:3: class_name: 'FORMULA' collides with a reserved name"),
    ("name: a\nformula: \"x *\\0 2\"\n", "s.yaml:2: formula: syntax error: source code string cannot contain null bytes"),
    # a power of a power multiplies the exponents, and raises a coefficient each time (99**4096
    # has more digits than Python prints: its message was a traceback)
    ("name: a\nformula: ((99*x)**64)**64\n", "s.yaml:2: formula: the number 5.26e+127 this makes is beyond float32's range"),
    ("name: a\nformula: (((x**64)**64)**64)**64*x\n", "the power x**4096 this makes has an exponent larger than 64"),
    ("name: a\nformula: x + ((2*x)**64)**64\n", "the power x**4096 this makes has an exponent larger than 64"),
    ("name: a\nformula: (x**8)**9\n", "s.yaml:2: formula: the power x**72 this makes has an exponent larger than 64"),
    # "\ud800" is a YAML escape for a lone surrogate, which no UTF-8 file (the generated module) holds
    ("name: a\nformula: x\ndoc: \"\\ud800\"\n", "s.yaml:3: doc: is not valid Unicode text (a lone surrogate at character 1)"),
    ("name: a\nformula: \"x # \\ud800\"\n", "s.yaml:2: formula: is not valid Unicode text (a lone surrogate at character 5)"),
    ("name: a\nformula: x*c0\nconstants: {" + ", ".join(f"c{i}: 1.0" for i in range(65)) + "}\n",
     "s.yaml:3: constants: 0 params and 65 constants; the limit is 64 together"),
    ("name: a\nformula: x * a\nparams: !!str {a: 1.0}\n", "s.yaml:3: spec: unsupported YAML tag tag:yaml.org,2002:str"),
    ("name: a\nformula: x\ninputs: !!map [x]\n", "s.yaml:3: spec: unsupported YAML tag tag:yaml.org,2002:map"),
    ("name: a\nformula: x\ndoc: !!timestamp 2001-12-14\n", "s.yaml:3: spec: unsupported YAML tag tag:yaml.org,2002:timestamp"),
])
def test_hostile_specs_are_clean_errors(text, expected):
    with pytest.raises(SpecError) as info:
        load_spec(text, "s.yaml")
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_powers_of_powers_within_the_limits_are_taken_and_plain_dates_are_text():
    """(x**8)**8 is x**64, within the limit; (2*x)**64's coefficient 2**64 is within float32's
    range and (x/99)**64's tiny one too; a doc YAML reads as a date, or as `=`, is that text."""
    for formula in ("(x**8)**8", "(2*x)**64", "(x/99)**64"):
        load_spec(f"name: a\nformula: {formula}\n", "s.yaml")
    assert load_spec("name: a\nformula: x\ndoc: 2001-12-14\n").doc == "2001-12-14"
    assert load_spec("name: a\nformula: x\ndoc: =\n").doc == "="


def test_hostile_spec_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\nformula: x\nparams: &a {p: *a}\n")
    out = tmp_path / "lib"
    r = subprocess.run([sys.executable, "-m", "actgen.cli", "build", str(spec), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not out.exists()
    assert r.stderr.strip() == f"{spec}:3: spec: YAML aliases (*name) are not supported"


def test_every_name_the_kernels_take_at_compile_time_is_reserved():
    """A constant or param named like one of the kernels' constexprs (ACC, CH_AXIS, ...) made
    a module with a duplicate argument, or a kernel that wrote the param over it."""
    import re
    from pathlib import Path

    import actgen.spec as spec_module

    found = set()
    for path in (Path(spec_module.__file__).parent / "ops").glob("*.py"):
        found |= set(re.findall(r"\b([A-Za-z_]\w*): tl\.constexpr", path.read_text()))
    assert found and found <= spec_module._GENERATED_NAMES, found - spec_module._GENERATED_NAMES


def test_every_triton_launch_keyword_is_reserved():
    """A kernel argument named like one of Triton's launch keywords or compile options is given
    twice at launch (a constant `num_warps` made the kernels unusable): every one the installed
    Triton has is reserved."""
    import dataclasses
    import inspect

    pytest.importorskip("triton")
    from triton.backends.amd.compiler import HIPOptions
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.runtime.jit import JITFunction

    import actgen.spec as spec_module

    names = {f.name for options in (CUDAOptions, HIPOptions) for f in dataclasses.fields(options)}
    names |= {p.name for p in inspect.signature(JITFunction.run).parameters.values() if p.kind == p.KEYWORD_ONLY}
    assert "num_warps" in names and names <= spec_module._GENERATED_NAMES, names - spec_module._GENERATED_NAMES


def test_plain_yaml_exponents_are_numbers():
    """PyYAML reads 1e-5 (no dot) as a string; a spec's number fields take it as the number."""
    spec = load_spec("name: a\nformula: x * c + d\nconstants: {c: 1e-5, d: -2E+3}\n", "s.yaml")
    assert [c.default for c in spec.constants] == [1e-5, -2000.0]
    with pytest.raises(SpecError, match="must be a number"):
        load_spec("name: a\nformula: x * c\nconstants: {c: '1e-5'}\n", "s.yaml")     # (quoted: a string)
    with pytest.raises(SpecError, match="beyond float32's range"):
        load_spec("name: a\nformula: x * c\nconstants: {c: 1e39}\n", "s.yaml")


def _tree(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_out_is_never_a_directory_or_file_actgen_did_not_write(tmp_path):
    """--out at a directory of the user's (here, the one holding the specs), or at a file, is
    an error that touches nothing; a package actgen built is rebuilt in place, the user's
    files in it kept, and so is one whose first build was cut short."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "s.yaml").write_text("name: a\nformula: x * 2\n")
    (specs / "notes").write_text("mine")
    before = _tree(tmp_path)
    for out, problem in ((specs, "is a directory actgen did not write (it holds notes, s.yaml)"),
                         (specs / "notes", "exists and is not a directory"),
                         (specs / "notes" / "pkg", "cannot write there (Not a directory)")):
        with pytest.raises(SpecError) as info:
            build([specs / "s.yaml"], out)
        assert info.value.problems == [f"{out}:0: --out: {problem}" + ("; give a new or empty directory, or a package "
                                       "actgen built" if "actgen did not" in problem else "")]
        assert _tree(tmp_path) == before
    lib = tmp_path / "lib"
    build([specs / "s.yaml"], lib)
    (lib / "NOTES.md").write_text("mine")
    (lib / "data").mkdir()
    (specs / "t.yaml").write_text("name: b\nformula: x * 3\n")
    result = build([specs], lib)
    assert sorted(result.changed) == ["__init__.py", "b.py"]
    assert sorted(p.name for p in lib.iterdir()) == ["NOTES.md", "__init__.py", "a.py", "b.py", "data"]
    assert (lib / "NOTES.md").read_text() == "mine"
    with pytest.raises(SpecError, match="would shadow a module"):
        build([specs], tmp_path / "torch")
    # a first build cut short: its modules written, a temp file left, no __init__.py yet
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "a.py").write_bytes((lib / "a.py").read_bytes())
    (cut / ".__init__.py.123.0123abcd.tmp").write_text("partial")
    assert sorted(build([specs], cut).changed) == ["__init__.py", "b.py"]


def test_a_users_file_that_says_do_not_edit_is_still_the_users(tmp_path):
    """Only a file whose first line is actgen's own header counts as generated: a user's file
    saying "DO NOT EDIT" in a package actgen built is kept on a rebuild, and a directory
    holding only such a file is the user's, refused as --out; an empty --out is an error, not
    the built-in library's directory."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "s.yaml").write_text("name: a\nformula: x * 2\n")
    lib = tmp_path / "lib"
    build([specs], lib)
    (lib / "helpers.py").write_text("# my helpers. DO NOT EDIT without asking Bob\nX = 1\n")
    (specs / "s.yaml").write_text("name: b\nformula: x * 3\n")
    result = build([specs], lib)
    assert result.removed == ["a.py"] and (lib / "helpers.py").read_text().startswith("# my helpers")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.py").write_text('"""Config. DO NOT EDIT."""\nSECRET = 1\n')
    before = _tree(tmp_path)
    with pytest.raises(SpecError, match="is a directory actgen did not write"):
        build([specs], cfg)
    r = subprocess.run([sys.executable, "-m", "actgen.cli", "build", str(specs), "--out", ""], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("<args>:0: --out: is empty") and "Traceback" not in r.stderr
    assert _tree(tmp_path) == before


def test_a_rebuild_never_writes_over_a_file_actgen_did_not_write(tmp_path):
    """A spec named as a module of the user's in a package actgen built (bar.py) is refused,
    and so is one named as a directory there (foo.py/): nothing is written, not even the
    other modules of the build (they were, one by one, before the error)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "foo.yaml").write_text("name: foo\nformula: x * 2\n")
    lib = tmp_path / "lib"
    build([specs], lib)
    (lib / "bar.py").write_text("MINE = 1\n")
    (specs / "bar.yaml").write_text("name: bar\nformula: x * 3\n")
    (specs / "baz.yaml").write_text("name: baz\nformula: x * 4\n")
    before = _tree(tmp_path)
    with pytest.raises(SpecError) as info:
        build([specs], lib)
    assert info.value.problems == [f"{lib / 'bar.py'}:0: --out: is a file actgen did not write; a build would "
                                   "replace it (rename the spec 'bar' or move the file)"]
    assert _tree(tmp_path) == before
    (lib / "bar.py").unlink()
    (lib / "foo.py").unlink()
    (lib / "foo.py").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(SpecError, match="foo.py:0: --out: is not a plain file, so the build cannot write foo.py"):
        build([specs], lib)
    assert _tree(tmp_path) == before


def test_out_paths_that_cannot_be_used_are_clean_errors(tmp_path):
    """--out a symlink loop or a name too long for the file system, and plot --out where
    nothing can be written: one line, exit 2, no traceback."""
    (tmp_path / "s.yaml").write_text("name: a\nformula: x * 2\n")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for out, problem in ((loop, "--out: cannot be resolved"), (tmp_path / ("a" * 300), "--out: cannot be used")):
        r = subprocess.run([sys.executable, "-m", "actgen.cli", "build", str(tmp_path / "s.yaml"), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr and problem in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "actgen.cli", "plot", "a", "--specs", str(tmp_path), "--out", "/proc/a.png"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("actgen plot: --out /proc/a.png: cannot write there"), r.stderr


def test_spec_files_that_are_not_regular_files_are_refused(tmp_path):
    import os

    from actgen.spec import load_specs

    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError) as info:
        load_specs([fifo])          # (reading it would wait for a writer forever)
    assert info.value.problems == [f"{fifo}:1: spec: is not a regular file"]
    with pytest.raises(SpecError, match="does not exist"):
        load_specs([tmp_path / "missing.yaml"])


def test_a_spec_directorys_entries_that_are_not_regular_files_are_errors(tmp_path):
    """In a directory of specs, a *.yaml that is a dangling symlink, a FIFO or a directory is
    an error, as it is when named alone: it was skipped, and the build exited 0 and removed
    the module its spec had generated before.  A directory named *.yaml is not expanded."""
    import os

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("name: a\nformula: x * 2\n")
    (specs / "b.yaml").write_text("name: b\nformula: x * 3\n")
    out = tmp_path / "lib"
    build([specs], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "b.py" in before
    (specs / "b.yaml").unlink()
    (specs / "b.yaml").symlink_to(tmp_path / "nowhere.yaml")
    os.mkfifo(specs / "c.yaml")
    (specs / "d.yaml").mkdir()
    (specs / "d.yaml" / "e.yaml").write_text("name: e\nformula: x\n")
    with pytest.raises(SpecError) as info:
        build([specs], out)
    assert info.value.problems == [f"{specs / 'b.yaml'}:1: spec: is a symlink to nothing (or to itself)",
                                   f"{specs / 'c.yaml'}:1: spec: is not a regular file",
                                   f"{specs / 'd.yaml'}:1: spec: is not a regular file"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(SpecError) as info:
        build([specs / "d.yaml"], out)
    assert info.value.problems == [f"{specs / 'd.yaml'}:1: spec: is not a regular file"]


def test_names_the_package_exports_are_unique_and_a_file_given_twice_is_one_spec(tmp_path):
    from actgen.spec import load_specs

    (tmp_path / "a.yaml").write_text("name: act\nformula: x\n")
    (tmp_path / "b.yaml").write_text("doc: d\n\nname: act_function\nformula: x\n")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert info.value.problems == [f"{tmp_path / 'b.yaml'}:3: name: 'act_function' exports 'ActFunction', as act in "
                                   f"{tmp_path / 'a.yaml'} does (rename one, or give it a class_name)"]
    (tmp_path / "b.yaml").unlink()
    assert [s.name for s in load_specs([tmp_path / "a.yaml", tmp_path])] == ["act"]


def _refused(tmp_path, text):
    """A spec of text refused by build: (its path, the problems); nothing written."""
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    with pytest.raises(SpecError) as info:
        build([spec], tmp_path / "lib")
    assert not (tmp_path / "lib").exists()
    return spec, info.value.problems


def test_a_formula_too_slow_to_compile_is_refused(tmp_path, monkeypatch):
    """Symbolic work can grow without bound on a short formula (sigmoid nested 20 deep took
    minutes): past MAX_COMPILE_SECONDS the spec is refused, and nothing is written."""
    import time

    import actgen.build as build_module

    monkeypatch.setattr(build_module, "MAX_COMPILE_SECONDS", 1)
    start = time.monotonic()
    spec, problems = _refused(tmp_path, "name: a\nformula: " + "sigmoid(" * 16 + "x" + ")" * 16 + "\n")
    assert time.monotonic() - start < 30
    assert problems == [f"{spec}:2: formula: too complex: compiling it took over 1 s"]


def test_a_formula_too_slow_to_parse_is_refused(tmp_path, monkeypatch):
    """Max and Min of Max and Min grow with the product of their arguments' branches as sympy
    builds them (this one takes seconds to parse, eight of them nested minutes): past
    MAX_PARSE_SECONDS the spec is refused, and nothing is written."""
    import actgen.spec as spec_module

    monkeypatch.setattr(spec_module, "MAX_PARSE_SECONDS", 0.5)
    spec, problems = _refused(tmp_path, "name: a\nformula: max(max(x,2*x,x+1,3*x),max(x+2,4*x,x+3,5*x))\n")
    assert problems == [f"{spec}:2: formula: too complex: parsing it took over 0.5 s"]


def test_odd_paths_and_numbers_are_clean_errors(tmp_path):
    """A spec path that is a symlink loop, or holds a newline, and an actgen.compile number
    past float64's range are one-line errors (a RuntimeError, a two-line message and an
    OverflowError before)."""
    import actgen

    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    with pytest.raises(SpecError) as info:
        build([loop], tmp_path / "lib")
    assert info.value.problems == [f"{loop}:1: spec: is a symlink to nothing (or to itself)"]
    odd = tmp_path / "bad\nname.yaml"
    odd.write_text("name: a\nformula: x *\n")
    with pytest.raises(SpecError) as info:
        build([odd], tmp_path / "lib")
    assert len(info.value.problems) == 1 and "\n" not in info.value.problems[0]
    assert info.value.problems[0].startswith(str(tmp_path) + "/bad\\nname.yaml:2: formula: syntax error")
    for kw in ({"constants": {"c": 10**400}}, {"params": {"c": 10**400}}, {"params": {"c": {"init": -10**400}}}):
        with pytest.raises(SpecError, match="must be a finite number, got an int of 401 digits"):
            actgen.compile("x*c", name="big", **kw)
    assert not (tmp_path / "lib").exists()


def test_the_time_limit_holds_in_any_thread_and_under_a_callers_own_timer():
    """Off the main thread (actgen.compile in a worker), or where the caller runs an interval
    timer (SIGALRM is then the caller's), work past the limit still raises TooSlow - it ran
    on unlimited before - and work done in time leaves nothing to be raised later."""
    import signal
    import threading
    import time

    from actgen.timelimit import TooSlow, time_limit

    def spin(seconds):          # (10 s at the most: a test that fails, not one that hangs)
        end = time.monotonic() + 10
        with time_limit(seconds):
            while time.monotonic() < end:
                pass

    outcome = []

    def worker():
        try:
            spin(0.2)
        except TooSlow:
            outcome.append("too slow")
        with time_limit(0.2):
            pass
        time.sleep(0.5)         # (past the second limit: nothing is raised)
        outcome.append("no stray exception")

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome == ["too slow", "no stray exception"]
    previous = signal.signal(signal.SIGALRM, lambda *a: outcome.append("caller's alarm"))
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        with pytest.raises(TooSlow):
            spin(0.2)
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0      # the caller's timer runs on
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_compile_refuses_what_a_spec_cannot_hold_and_names_the_call(monkeypatch):
    """actgen.compile: a param's dict holding a value no spec holds (an object, numpy's
    bool) is a SpecError, not json's TypeError; a formula the compiler fails on is reported
    as the call's (`<compile NAME>`), not as the cache's spec file, which is not left behind."""
    import numpy as np

    import actgen
    import actgen.build as build_module
    from actgen.cache import cache_dir

    for extra in ({"extra": object()}, {"per_channel": np.bool_(True)}):
        with pytest.raises(SpecError, match="<compile p>: params.a.(extra|per_channel): must be a number, a bool or a str"):
            actgen.compile("x * a", name="p", params={"a": {"init": 1.0, **extra}})

    def fails(spec):
        raise RuntimeError("no form for this")

    monkeypatch.setattr(build_module, "derive", fails)
    before = set(cache_dir().glob("*.yaml")) if cache_dir().exists() else set()
    with pytest.raises(SpecError) as info:
        actgen.compile("x * sigmoid(x) + 0.125", name="fails_here")
    assert info.value.problems == ["<compile fails_here>: formula: cannot be compiled (RuntimeError: no form for this)"]
    assert set(cache_dir().glob("*.yaml")) == before


def test_compile_errors_name_the_call_without_a_line_of_their_own():
    """compile's problems carry no line of the YAML it writes internally (the caller never
    sees it), and a name that is not a plain identifier is written as repr() writes it: no
    control character reaches a terminal raw."""
    import actgen

    with pytest.raises(SpecError) as info:
        actgen.compile("x * q", name="ab")
    assert info.value.problems == ["<compile ab>: formula: unknown name 'q' (known names: x; constants: pi, E) at column 5"]
    with pytest.raises(SpecError) as info:
        actgen.compile("x", name="a\x1b[2Jb")
    (line,) = info.value.problems
    assert line.startswith("<compile 'a\\x1b[2Jb'>: name: ") and "\x1b" not in line


def test_a_formula_the_compiler_fails_on_is_reported_not_raised(tmp_path, monkeypatch):
    """The last line of defence: whatever derive raises on a formula that passed validation
    becomes `path:line: formula: cannot be compiled (...)`."""
    import actgen.build as build_module

    def fails(spec):
        raise RuntimeError("no form for this")

    monkeypatch.setattr(build_module, "derive", fails)
    spec, problems = _refused(tmp_path, "name: a\ndoc: d\nformula: x * sigmoid(x)\n")
    assert problems == [f"{spec}:3: formula: cannot be compiled (RuntimeError: no form for this)"]


def _op(tmp_path, text):
    """Build one spec into a fresh package under tmp_path and import it: (spec, module)."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(text)
    package = f"hostile_{abs(hash(text)) % 10**8}"
    build([spec_file], tmp_path / package)
    sys.path.insert(0, str(tmp_path))
    try:
        spec = load_spec(text)
        return spec, importlib.import_module(f"{package}.{spec.name}")
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("text", [
    "name: f\nformula: abs(log(x))\n",
    "name: f\nformula: erfc(log(x))\n",
    "name: f\nformula: Abs(log(x) - log(1+x))\n",
    "name: f\nformula: where(log(c) > 0, x, 0)\nconstants: {c: -1.0}\n",
    "name: f\nformula: where(log1p(p) > 0, x, 2*x)\nparams: {p: -2.0}\n",
    "name: f\nformula: x * sigmoid(x) + c - 3e38\nconstants: {c: 1.0}\n",
    "name: f\nformula: x**x**x**x\n",
    "name: f\nformula: tanh(exp(sqrt(x)))\n",
    "name: f\nformula: cos(sinh(x))\n",
    "name: f\nformula: cos(log(x))\n",
    "name: f\nformula: tan(log(x**2 - 1))\n",
    "name: f\nformula: expm1(cosh(sqrt(x)))\n",
    "name: f\nformula: sigmoid(exp(sqrt(x))) * x\n",
    "name: f\nformula: max(x, Piecewise((k, ~(-0.5 < k)), (x, True)))\nparams: {k: 0.985}\n",
    "name: f\nformula: x * max(max(Abs(k), x, Piecewise((k, ~(-0.5 < k)), (x, True))), 3)\nparams: {k: 0.985}\n",
])
def test_odd_formulas_build_and_match_plain_torch(tmp_path, text):
    """Each of these once crashed the compiler or its generated code; f must match the
    formula as plain torch in float64 (NaN where it is NaN), and backward must run."""
    spec, mod = _op(tmp_path, text)
    fn = getattr(mod, spec.name)
    x = torch.linspace(-6, 6, 242, dtype=torch.float64).reshape(2, -1).requires_grad_()
    params = [torch.full((1,), p.init, dtype=torch.float64) for p in spec.params]
    y = fn(x, *params)
    want = reference_call(spec, [x.detach()], params, {})
    torch.testing.assert_close(y.detach(), want.expand_as(y), equal_nan=True, rtol=1e-9, atol=1e-12)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("formula", [
    "(x - sinh(x))**2",
    "3*(x - sinh(x))**3",
    "(x - tanh(x))**2 + x",
    "(sinh(x) - x)/(1 + (x - sinh(x))**2)",
])
def test_powers_of_sums_rewritten_near_zero_differentiate_as_written(tmp_path, formula):
    """x - sinh(x) cancels near 0 and is computed there from a rational approximant; a power
    or product of it is differentiated as the formula's own (the derivative once came from
    the power's base and exponent added together, or sympy recursed without end)."""
    spec, mod = _op(tmp_path, f"name: f\nformula: {formula}\n")
    x = torch.linspace(-4, 4, 161, dtype=torch.float64).requires_grad_()
    y = mod.f(x)
    want_x = x.detach().clone().requires_grad_()
    want = reference_call(spec, [want_x], [], {})
    torch.testing.assert_close(y.detach(), want.detach(), rtol=1e-9, atol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)
    (want_g,) = torch.autograd.grad(want.sum(), want_x)
    torch.testing.assert_close(g, want_g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("text", [
    # the second clamp of a and a_1's first were both _clamped_a_1
    "name: f\ninputs: [a, a_1]\nformula: 0.5*a*(1 + erf(a/sqrt(2))) * (0.5*a_1*(1 + erf(a_1/sqrt(2))))\n",
    # d2f/da db_c and d2f/da_b dc were both _d2_a_b_c
    "name: f\ninputs: [a, a_b]\nformula: sin(a)*b_c*a_b + a*a_b*c*c + a*a\nparams: {b_c: 0.5, c: 0.7}\n",
])
def test_names_of_generated_values_are_distinct_whatever_the_spec_names(tmp_path, text):
    """Generated names built from spec names (an input's clamps, the second derivatives of two
    names) are distinct also where the names themselves hold underscores; the second
    derivatives match the formula as plain torch's, differentiated twice by autograd."""
    spec, mod = _op(tmp_path, text)
    fn = getattr(mod, spec.name)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, generator=gen, dtype=torch.float64) * 3 for _ in spec.inputs]
    ps = [torch.full((1,), p.init, dtype=torch.float64) for p in spec.params]

    def second(call):
        args = [t.clone().requires_grad_() for t in xs + ps]
        first = torch.autograd.grad(call(args).sum(), args, create_graph=True)
        return [torch.zeros_like(a) if g is None else g for k in range(len(args))
                for a, g in zip(args, torch.autograd.grad(first[k].sum(), args, retain_graph=True, allow_unused=True))]

    got = second(lambda args: fn(*args))
    want = second(lambda args: reference_call(spec, args[:len(xs)], args[len(xs):], {}))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_gated_op_with_a_per_channel_param_has_a_module(tmp_path):
    spec, mod = _op(tmp_path, "name: f\nformula: a * b * s\ninputs: [a, b]\nparams: {s: {init: 1.5, per_channel: true}}\n")
    m = mod.F(num_channels=3)
    assert m.s.shape == (3,)
    with torch.no_grad():
        m.s.copy_(torch.tensor([0.5, 1.0, 2.0]))
    v = torch.randn(2, 3, 8, requires_grad=True)
    y = m(v)
    a, b = v.detach().chunk(2, dim=-1)
    torch.testing.assert_close(y, a * b * m.s.detach().view(-1, 1))
    y.sum().backward()
    assert m.s.grad.shape == (3,)


@pytest.mark.parametrize("formula, c, want", [
    ("x * (1/c)", 0.0, lambda x: x * math.inf),
    ("x / (c - 1)", 1.0, lambda x: x / 0.0),
    ("x * log(c)", 0.0, lambda x: x * -math.inf),
    ("x * log(c)", -1.0, lambda x: x * math.nan),
    ("x * log1p(c)", -1.0, lambda x: x * -math.inf),
    ("x * sqrt(c)", -1.0, lambda x: x * math.nan),
    ("x * c**0.5", -1.0, lambda x: x * math.nan),
    ("x * c**(-1)", 0.0, lambda x: x * math.inf),
    ("x * exp(c)", 1000.0, lambda x: x * math.inf),
    ("x * sinh(c)", -1000.0, lambda x: x * -math.inf),
    ("x * sin(c)", math.inf, lambda x: x * math.nan),
])
def test_constants_compute_as_ieee_floats(tmp_path, formula, c, want):
    """A constant can be anything at call time: its expressions give inf or NaN as the
    formula's tensors would (c/0, log(-1), exp(1000)), not a Python exception, forward and
    backward."""
    spec, mod = _op(tmp_path, f"name: f\nformula: {formula}\nconstants: {{c: 2.0}}\n")
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    y = mod.f(x, c=c)
    torch.testing.assert_close(y.detach(), want(x.detach()), equal_nan=True)
    y.sum().backward()
    with torch.no_grad():
        slope = want(torch.ones(1, dtype=torch.float64))        # f is x times a constant
    torch.testing.assert_close(x.grad, slope.expand_as(x), equal_nan=True)


@pytest.mark.parametrize("name", ["exp", "expm1", "cosh", "sinh", "log", "log1p", "sqrt", "sin", "cos", "tan"])
def test_runtime_scalar_functions_are_torch_on_floats(name):
    values = [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 700.0, 710.0, -710.0, 1e308, math.inf, -math.inf, math.nan]
    fn = getattr(rt, f"scalar_{name}")
    for v in values:
        want = getattr(torch, name)(torch.tensor(v, dtype=torch.float64)).item()
        got = fn(v)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-15), (name, v, got, want)


def test_runtime_scalar_division_and_power_are_torch_on_floats():
    values = [0.0, -0.0, 2.0, -2.0, 0.5, -8.0, 1e300, math.inf, -math.inf, math.nan]
    for a in values:
        for b in values + [3.0, -3.0, 1 / 3]:
            ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
            for got, want in ((rt.scalar_div(a, b), (ta / tb).item()), (rt.scalar_pow(a, b), (ta ** tb).item())):
                assert (math.isnan(got) and math.isnan(want)) or got == want, (a, b, got, want)


def test_masks_of_params_and_of_the_chunk_combine_into_out():
    """A param's 0-dim mask first, the chunk's after: out keeps the chunk's shape."""
    x = torch.linspace(-2, 2, 12)
    k = torch.tensor(1.0)
    for combine, ref in ((rt.mask_or, torch.maximum), (rt.mask_and, torch.mul)):
        out = torch.full((12,), math.nan)
        got = combine(rt.gt(k, 0.5), rt.lt(k, 2.0), rt.gt(x, 0.0), out=out)
        assert got.shape == (12,) and out.shape == (12,)
        torch.testing.assert_close(got, ref(ref((k > 0.5).float(), (k < 2.0).float()), (x > 0).float()).expand(12))


def test_runtime_number_beyond_the_dtype_is_inf():
    like = torch.zeros(3)
    assert rt.number(like, 1e300).item() == math.inf and rt.number(like, -1e300).item() == -math.inf
    assert rt.number(like.double(), 1e300).item() == 1e300


@pytest.mark.parametrize("c", [1.0, -1.0])
def test_a_condition_of_constants_alone_picks_its_branch(tmp_path, c):
    """where(c > 0, ...) with c a constant is one bool: the guarded path (taken where an input
    or a result is not finite) picks the branch with it, as the fast path does."""
    spec, mod = _op(tmp_path, "name: f\nformula: where(c > 0, sqrt(x), exp(x))\nconstants: {c: 1.0}\n")
    x = torch.tensor([-1.0, 0.0, 2.0, 700.0, math.inf, -math.inf, math.nan], dtype=torch.float64, requires_grad=True)
    y = mod.f(x, c=c)
    want = reference_call(spec, [x.detach()], [], {"c": c})
    torch.testing.assert_close(y.detach(), want, equal_nan=True)
    y.sum().backward()
    slope = torch.func.vmap(torch.func.grad(lambda t: torch.sqrt(t) if c > 0 else torch.exp(t)))(x.detach())
    torch.testing.assert_close(x.grad[:4], slope[:4], equal_nan=True)


def test_runtime_rdiv_rounds_once_and_is_zero_over_a_subnormal():
    """c / t for a float c: one IEEE division (Python's c / t on a tensor is t.reciprocal()*c:
    NaN for 0 over a subnormal, whose reciprocal overflows)."""
    g = torch.Generator().manual_seed(5)
    t = torch.rand(10000, generator=g) * 4 - 2
    for c in (0.3, -7.0, 1e-30):
        want = (torch.tensor(c, dtype=torch.float32).double() / t.double()).float()
        assert torch.equal(rt.rdiv(c, t), want)
    sub = torch.tensor([1e-40, -1e-40, 1e-45])
    assert torch.equal(rt.rdiv(0.0, sub), torch.tensor([0.0, -0.0, 0.0]))
    out = sub.clone()
    assert rt.rdiv(2.0, out, out=out) is out and torch.isinf(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squareplus_at_b_0_is_0_left_of_0_down_to_subnormals(dtype):
    from actgen.ops import squareplus
    from _reference import SPECS
    x = torch.tensor([-1e-40, -1e-45, -1e-39, -1e-30, -3.0, 1e-40, 2.0], dtype=dtype)
    want = reference_call(SPECS["squareplus"], [x.double()], [], {"b": 0.0}).to(dtype)
    torch.testing.assert_close(squareplus(x, b=0.0), want, rtol=0, atol=0)


def test_float64_kernels_take_bare_numbers_in_float64(tmp_path, triton_backend):
    """A number tl.where would take as float32 first (asinh(3.0) as a branch) and an
    evaluation-mode draw (lo + (hi - lo)/2) are float64 in a float64 kernel: the kernels
    agree with the formula as plain torch to float64 rounding, not float32's."""
    text = ("name: f\nformula: where(a < c, asinh(3.0), b / (1 + abs(c))) - softplus(uniform(0.3, 0.9) * b)\n"
            "inputs: [a, b]\nconstants: {c: 1.0}\n")
    spec, mod = _op(tmp_path, text)
    a = torch.linspace(-3, 3, 7, dtype=torch.float64)
    b = torch.linspace(-2, 2.5, 7, dtype=torch.float64)
    y = mod.f(a, b, training=False)
    torch.testing.assert_close(y, reference_call(spec, [a, b], [], {}), rtol=4e-16, atol=4e-16)
    # a where of two numbers is float64 too: 0.1 times it was float32's 0.1 (1e8 float64 ULP)
    spec, mod = _op(tmp_path, "name: g\nformula: Max(x, 0) + 0.1*Min(x, 0)\n")
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(mod.g(x).sum(), x)
    assert g.tolist() == [0.1, 0.1, 1.0, 1.0]
    # a constant reaches the kernels as three float32 parts: float64 data computes with it
    # exactly (x*c with c = 0.1 was float32's 0.1), float32 data with its float32 rounding
    spec, mod = _op(tmp_path, "name: h\nformula: x*c + c\nconstants: {c: 0.1}\n")
    for c in (0.1, 1 / 3, -2.0**-140, 3.0e38):
        y = mod.h(x, c=c)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert y.tolist() == [v * c + c for v in x.tolist()] and g.tolist() == [c] * 4
        x32 = x.detach().float()
        assert mod.h(x32, c=c).tolist() == (x32 * c + c).tolist()
    for c in (math.inf, math.nan, 1e39):        # (beyond float32: as a float32 takes it)
        assert torch.equal(mod.h(x.detach().float(), c=c).isnan(), (x.detach().float() * c + c).isnan())


def test_a_package_another_build_writes_meanwhile_is_no_file_of_the_users(tmp_path, monkeypatch):
    """Two builds into one new out at once: each read out before the other wrote it. The
    modules the other build wrote since are actgen's (read again, they carry its mark), not
    the user's: the second build completes (it was "is a file actgen did not write"), and a
    module of the user's that appeared meanwhile is still refused."""
    import actgen.build as build_module
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("name: a\nformula: x * 2\n")
    (specs / "b.yaml").write_text("name: b\nformula: x * 3\n")
    lib = tmp_path / "lib"
    build([specs], lib)                                      # the other build, done first
    monkeypatch.setattr(build_module, "_existing", lambda out: {})      # what this one read before
    (specs / "b.yaml").write_text("name: b\nformula: x * 4\n")
    assert sorted(build([specs], lib).changed) == ["__init__.py", "a.py", "b.py"]
    assert "x * 4" in (lib / "b.py").read_text()
    (lib / "c.py").write_text("MINE = 1\n")
    (specs / "c.yaml").write_text("name: c\nformula: x * 5\n")
    with pytest.raises(SpecError, match="actgen did not write") as info:
        build([specs], lib)
    assert "c.py" in str(info.value) and (lib / "c.py").read_text() == "MINE = 1\n"


def test_a_fifo_in_out_is_no_file_a_build_reads(tmp_path):
    """A named pipe in --out (not a module) is the user's: the build refuses the folder at
    once; it does not open it (reading a FIFO blocks until someone writes)."""
    import os

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("name: a\nformula: x * 2\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    os.mkfifo(lib / "pipe")
    r = subprocess.run([sys.executable, "-m", "actgen.cli", "build", str(specs), "--out", str(lib)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is a directory actgen did not write (it holds pipe)" in r.stderr, r.stderr
