"""Spec validation: every error class, path:line: field: message, exit code 2, nothing written."""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from actgen import cli
from actgen.spec import SpecError, load_spec, load_specs

GOOD = """\
name: swish_beta
formula: x * sigmoid(beta * x)
doc: Swish with a learnable beta
params:
  beta: {init: 1.0, per_channel: true}
"""


def errors(text, path="s.yaml"):
    with pytest.raises(SpecError) as info:
        load_spec(textwrap.dedent(text), path)
    return info.value.problems


def test_good_spec_and_defaults():
    s = load_spec(GOOD, "swish_beta.yaml")
    assert s.name == "swish_beta" and s.class_name == "SwishBeta" and s.inputs == ("x",)
    assert s.params[0].name == "beta" and s.params[0].per_channel and s.params[0].init == 1.0
    s2 = load_spec("name: leaky_relu\nformula: where(x > 0, x, negative_slope * x)\nconstants: {negative_slope: 0.01}\n")
    assert s2.class_name == "LeakyRelu" and s2.constants[0].default == 0.01
    s3 = load_spec("name: p\nformula: x * b\nparams: {b: 2}\n")
    assert s3.params[0].init == 2.0 and not s3.params[0].per_channel


@pytest.mark.parametrize("text, expected", [
    ("formula: x\n", "s.yaml:1: name: is required"),
    ("name: a\n", "s.yaml:1: formula: is required"),
    ("name: a\nformula: x\nfoo: 1\n", "s.yaml:3: foo: unknown field (known fields: name, formula"),
    ("name: A\nformula: x\n", "s.yaml:1: name: 'A' must match"),
    ("name: class\nformula: x\n", "s.yaml:1: name: 'class' must match"),
    ("name: a\nformula: 3\n", "s.yaml:2: formula: must be a string"),
    ("name: a\nformula: x +\n", "s.yaml:2: formula: syntax error"),
    ("name: a\nformula: x * y\n", "s.yaml:2: formula: unknown name 'y' (known names: x"),
    ("name: a\nformula: '2'\n", "s.yaml:2: formula: does not use the input(s) x"),
    ("name: a\nformula: x\ninputs: x\n", "s.yaml:3: inputs: must be a list of one or two names"),
    ("name: a\nformula: x\ninputs: [x, y, z]\n", "s.yaml:3: inputs: must be a list"),
    ("name: a\nformula: x\nparams:\n  x: 1.0\n", "s.yaml:4: params: 'x' is already declared as an input"),
    ("name: a\nformula: x\nparams:\n  b: 1.0\nconstants:\n  b: 2.0\n", "s.yaml:6: constants: 'b' is already declared as a param"),
    ("name: a\nformula: x\nparams:\n  exp: 1.0\n", "s.yaml:4: params: 'exp' collides with a reserved name"),
    ("name: a\nformula: x\nconstants:\n  pi: 1.0\n", "s.yaml:4: constants: 'pi' collides"),
    ("name: a\nformula: x\nparams:\n  b: {init: one}\n", "s.yaml:4: params.b.init: must be a number"),
    ("name: a\nformula: x\nparams:\n  b: {per_channel: true}\n", "s.yaml:4: params.b.init: is required"),
    ("name: a\nformula: x\nparams:\n  b: {init: 1, per_channel: 2}\n", "s.yaml:4: params.b.per_channel: must be true or false"),
    ("name: a\nformula: x\nparams:\n  b: {init: 1, size: 2}\n", "s.yaml:4: params.b.size: unknown field"),
    ("name: a\nformula: x\nparams:\n  b: .inf\n", "s.yaml:4: params.b: must be a finite number"),
    ("name: a\nformula: x\nconstants: [1]\n", "s.yaml:3: constants: must be a mapping"),
    ("name: a\nformula: x\nclass_name: lower\n", "s.yaml:3: class_name: 'lower' must match"),
    ("name: a\nformula: x\nreference: os.system('x')\n", "s.yaml:3: reference: "),
    ("name: a\nname: b\nformula: x\n", "s.yaml:2: name: is given twice"),
    ("name: x\nformula: x\n", "s.yaml:1: name: 'x' is also declared as an input"),
    ("name: a\nformula: x\nparams:\n  b_ptr: 1.0\n", "s.yaml:4: params: 'b_ptr' must not end in _ptr"),
    ("- a\n- b\n", "s.yaml:1: spec: must be a mapping"),
    ("name: [unclosed\n", "s.yaml:2: spec: invalid YAML"),
    ("name: a\nformula: !!python/object/apply:os.system ['echo pwned']\n", "s.yaml:2: spec: unsupported YAML tag"),
    ("name: a\nformula: x\nparams:\n  b: !!python/object/apply:os.system [echo]\n", "s.yaml:4: spec: unsupported YAML tag"),
    ("name: a\nformula: x\nconstants: {c: !!binary aGVsbG8=}\n", "s.yaml:3: spec: unsupported YAML tag"),
    ("name: a\nformula: x * uniform(x, 1)\n",
     "s.yaml:2: formula: uniform(lo, hi): the bounds must not depend on the input x (they are numbers, constants or params) at column 5"),
    ("name: a\ninputs: [a, b]\nformula: a * uniform(0, b + 1)\n", "s.yaml:3: formula: uniform(lo, hi): the bounds must not depend on the input b"),
    ("name: a\nformula: x * uniform(0)\n", "s.yaml:2: formula: uniform takes 2 arguments (lo, hi), got 1"),
    ("name: a\nformula: x * uniform(0, uniform(1, 2))\n", "s.yaml:2: formula: uniform(lo, hi): the bounds must not contain another uniform"),
    ("name: a\nformula: x\nconstants:\n  training: 1.0\n", "s.yaml:4: constants: 'training' collides with a reserved name"),
    ("name: a\nformula: x\nparams:\n  uniform: 1.0\n", "s.yaml:4: params: 'uniform' collides with a reserved name"),
    # a Module's factory keywords: `def __init__(self, device=2.0, *, ..., device=None)` did not import
    ("name: a\nformula: x * device * w\nconstants: {device: 2.0}\nparams: {w: 1.0}\n",
     "s.yaml:3: constants: 'device' collides with a reserved name"),
    ("name: a\nformula: x * dtype\nparams: {dtype: 1.0}\n", "s.yaml:3: params: 'dtype' collides with a reserved name"),
    # numbers sympy folds together are held to float32's range as one written is (1e45*x was inf)
    ("name: a\nformula: x * 1e30 * 1e15\n", "s.yaml:2: formula: the number 1.00000000000000e+45 this makes is beyond float32's range"),
    ("name: a\nformula: x / 1e-30 / 1e-30\n", "s.yaml:2: formula: the number 1.00000000000000e+60 this makes is beyond"),
    ("name: a\nformula: x + 10**30 * 10**15\n", "s.yaml:2: formula: the number 1.00e+45 this makes is beyond"),
    # the joined lines of a block would be one comment from the '#' on (x * sigmoid(x) without its + 1)
    ("name: a\nformula: |\n  x * sigmoid(x)  # the gate\n  + 1\n", "s.yaml:2: formula: '#' at column 17: a formula holds no comments"),
])
def test_each_error_class(text, expected):
    problems = errors(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_reported_at_once():
    problems = errors("name: Bad\nformula: y\nfoo: 1\nparams:\n  exp: 1\n")
    assert len(problems) >= 4


def test_bad_inputs_are_one_problem_not_the_formulas_names_too():
    """With the inputs field refused, the formula's names cannot be told: no second error
    saying its inputs are unknown names."""
    assert errors("name: f\ninputs: [a, b, c]\nformula: a*b*c\n") == [
        "s.yaml:2: inputs: must be a list of one or two names (two make a gated activation)"]


def test_duplicate_names_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text("name: same\nformula: x\n")
    (tmp_path / "b.yaml").write_text("name: same\nformula: 2*x\n")
    with pytest.raises(SpecError, match=r"b.yaml:1: name: 'same' is already defined in .*a.yaml"):
        load_specs([tmp_path])


MODES = "name: a\nformula: x\nmodes:\n  fast: {exact: a, rough: b}\n"


@pytest.mark.parametrize("text, expected", [
    ("name: a\nformula: x\nmodes: [a, b]\n", "s.yaml:3: modes: must be a mapping of one keyword"),
    ("name: a\nformula: x\nmodes: {p: {u: a, v: b}, q: {u: a, v: b}}\n", "s.yaml:3: modes: must be a mapping of one keyword"),
    ("name: a\nformula: x\nmodes: {x: {u: a, v: b}}\n", "s.yaml:3: modes: 'x' is already declared as an input"),
    ("name: a\nformula: x\nmodes: {inplace: {u: a, v: b}}\n", "s.yaml:3: modes: 'inplace' collides with a reserved name"),
    ("name: a\nformula: x\nmodes: {fast: {u: a}}\n", "s.yaml:3: modes.fast: must map 2 to 8 values"),
    ("name: a\nformula: x\nmodes: {fast: {u: b, v: a}}\n", "s.yaml:3: modes.fast.u: the first value must name this activation"),
    ("name: a\nformula: x\nmodes: {fast: {u: a, v: a}}\n", "s.yaml:3: modes.fast.v: the first value must name this activation"),
    ("name: a\nformula: x\nmodes: {fast: {u: a, 'no way': b}}\n", "s.yaml:3: modes.fast: 'no way' must be a distinct word"),
    ("name: a\nformula: x\nmodes: {fast: {u: a, v: B}}\n", "s.yaml:3: modes.fast.v: 'B' must be an activation's name"),
    ("name: a\nformula: x * c\nconstants: {c: 2}\nmodes: {fast: {u: a, v: b}}\n",
     "s.yaml:4: modes: only an activation of one input without params or constants"),
], ids=lambda v: v if v.startswith("s.yaml") else "")
def test_modes_errors(text, expected):
    assert any(p.startswith(expected) for p in errors(text)), errors(text)


@pytest.mark.parametrize("other, expected", [
    (None, "'rough' names 'b', which is not among the specs built"),
    ("name: b\nformula: x * w\nparams: {w: 1}\n", "'rough' names 'b', which does not take what 'a' takes"),
    ("name: b\nformula: x\nmodes: {m: {u: b, v: a}}\n", "'rough' names 'b', which has modes itself"),
])
def test_modes_name_activations_of_the_same_build(other, expected, tmp_path):
    (tmp_path / "a.yaml").write_text(MODES)
    if other:
        (tmp_path / "b.yaml").write_text(other)
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert any(p.startswith(f"{tmp_path / 'a.yaml'}:4: modes: {expected}") for p in info.value.problems), info.value.problems


def test_cli_modes_naming_a_missing_activation_exit_2_nothing_written(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(MODES)
    out = tmp_path / "pkg"
    r = _cli("build", str(specs), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[0] == f"{specs / 'a.yaml'}:4: modes: 'rough' names 'b', which is not among the specs built"
    assert not out.exists()


def test_a_built_package_picks_its_modes(tmp_path):
    """A package built from a spec with modes: the functional and the module pick the other
    activation by the keyword's value, as written in the specs (their formulas in plain torch)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(MODES.replace("formula: x", "formula: x * tanh(x)"))
    (specs / "b.yaml").write_text("name: b\nformula: x * sigmoid(x)\n")
    r = _cli("build", str(specs), "--out", str(tmp_path / "mypkg"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    code = textwrap.dedent("""
        import torch, mypkg
        x = torch.linspace(-4, 4, 9, dtype=torch.float64)
        assert torch.allclose(mypkg.a(x), x * torch.tanh(x))
        assert torch.allclose(mypkg.a(x, fast="rough"), x * torch.sigmoid(x))
        assert torch.allclose(mypkg.A("rough")(x), x * torch.sigmoid(x))
        print(mypkg.A(fast="rough"))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "A(fast='rough')"


ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "actgen.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_bad_spec_exit_2_no_traceback_nothing_written(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "good.yaml").write_text(GOOD)
    (specs / "bad.yaml").write_text("name: bad\nformula: __import__('os').system('touch pwned')\n")
    out = tmp_path / "pkg"
    r = _cli("build", str(specs), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[0].startswith(f"{specs / 'bad.yaml'}:2: formula: ")
    assert not out.exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("checks, problem", [
    ("checks: [lo <= hi]\n", "4: checks: must map 1 to 8 conditions on the constants"),
    ("checks: {x <= hi: bad}\n", "4: checks: 'x <= hi': unknown name 'x'"),
    ("checks: {lo <= lo: always}\n", "4: checks: 'lo <= lo': is always true"),
    ("checks: {lo + hi: nope}\n", "4: checks: 'lo + hi': expected a condition"),
    ("checks: {lo <= hi: ''}\n", "4: checks: the message of 'lo <= hi' must be one line"),
    ("checks: {lo <= hi: 3}\n", "4: checks: must be a string"),
    # (a draw was reported against the formula's line, as a printer's failure)
    ("checks: {'uniform(0, 1) < hi': bad}\n", "4: checks: 'uniform(0, 1) < hi': draws (uniform) have no place"),
    # defaults that fail a check: every call with them raised its message
    ("checks: {'hi > 2': hi must exceed 2}\n", "4: checks: the constants' defaults (hi = 1.0) do not meet 'hi > 2'"),
])
def test_checks_must_be_conditions_on_the_constants_with_a_message(tmp_path, checks, problem):
    spec = tmp_path / "clip.yaml"
    spec.write_text("name: clip\nformula: Min(Max(x, lo), hi)\nconstants: {lo: -1.0, hi: 1.0}\n" + checks)
    with pytest.raises(SpecError) as info:
        load_specs([spec])
    assert any(p.startswith(f"{spec}:") and problem in p for p in info.value.problems), info.value.problems


def test_checks_raise_their_message_from_the_functional_and_the_module(tmp_path):
    """A built op with checks: a ValueError with the message where a condition fails, for
    the functional and the Module; the op as usual where they hold (also on the bound)."""
    import importlib
    import sys as _sys

    (tmp_path / "clip.yaml").write_text("name: clip\nformula: Min(Max(x, lo), hi)\nconstants: {lo: -1.0, hi: 1.0}\n"
                                        "checks:\n  (lo <= hi) & (hi - lo < 100): the range must be 0 to 100 long\n")
    from actgen.build import build

    build([tmp_path / "clip.yaml"], tmp_path / "clips")
    _sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("clips.clip")
    finally:
        _sys.path.remove(str(tmp_path))
    x = torch.linspace(-3, 3, 13)
    for lo, hi in ((1.0, -1.0), (-60.0, 60.0), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="^clip: the range must be 0 to 100 long$"):
            mod.clip(x, lo, hi)
        with pytest.raises(ValueError, match="^Clip: the range must be 0 to 100 long$"):
            mod.Clip(lo, hi)
    torch.testing.assert_close(mod.clip(x, 0.5, 0.5), torch.full_like(x, 0.5))
    torch.testing.assert_close(mod.Clip(-2.0, 1.0)(x), x.clamp(-2.0, 1.0))


def test_compile_takes_checks():
    import actgen

    m = actgen.compile("Min(Max(x, lo), hi)", name="clip_checked", constants={"lo": -1.0, "hi": 1.0},
                       checks={"lo <= hi": "lo must not exceed hi"})
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(m.clip_checked(x, -2.0, 2.0), x.clamp(-2.0, 2.0))
    with pytest.raises(ValueError, match="^clip_checked: lo must not exceed hi$"):
        m.clip_checked(x, 2.0, -2.0)
    with pytest.raises(SpecError, match="checks: must map conditions to str messages"):
        actgen.compile("Min(x, hi)", name="bad_checks", constants={"hi": 1.0}, checks={"hi > 0": 3})
    with pytest.raises(SpecError, match="checks: 'x > 0': unknown name 'x'"):
        actgen.compile("Min(x, hi)", name="bad_checks", constants={"hi": 1.0}, checks={"x > 0": "no"})
    # a bad formula is a ValueError to compile's caller, as any bad argument
    with pytest.raises(ValueError, match="formula: syntax error"):
        actgen.compile("x +", name="bad_formula")


def test_cli_plot_and_list_refuse_what_they_cannot_do_in_one_line(tmp_path, monkeypatch, capsys):
    """plot into a path under a file or with a name that is no image format, and list
    outside the repository without --specs: one line, exit 2, nothing written (they were
    tracebacks, or a message about a spec file specs:1)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "good.yaml").write_text(GOOD)
    afile = tmp_path / "afile"
    afile.write_text("")
    for out, problem in ((afile / "x.png", f"{afile} is not a directory"), (tmp_path / "x.txt", "not an image file name")):
        r = _cli("plot", "swish_beta", "--specs", str(specs), "--out", str(out), cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"actgen plot: --out {out}: {problem}")
        assert not out.exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _cli("list", cwd=elsewhere)         # (the built-in library's specs, beside the package)
    assert r.returncode == 0 and any(line.split()[:2] == ["mish", "Mish"] for line in r.stdout.splitlines())
    r = _cli("show", "mish", cwd=elsewhere)
    assert r.returncode == 0 and f"generated source: {ROOT / 'actgen' / 'ops' / 'mish.py'}" in r.stdout
    with monkeypatch.context() as m:        # (an install with no specs beside it)
        m.chdir(elsewhere)
        m.setattr(cli, "CATALOGUE_SPECS", tmp_path / "none")
        assert cli.main(["list"]) == 2
    assert capsys.readouterr().err.strip() == \
        "<args>:0: --specs: no specs/ here (run it in the repository root, or give --specs DIR)"
    r = _cli("plot", "swish_beta", "--specs", str(specs), "--out", str(tmp_path / "new" / "good.png"), cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "new" / "good.png").stat().st_size > 1000


def test_an_activation_named_as_the_packages_helper_is_the_packages(tmp_path):
    """A spec named lazy_package: the built package's attribute is the activation (it was the
    helper the package's __init__ imported under that name)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "lazy_package.yaml").write_text("name: lazy_package\nformula: 2 * x\n")
    r = _cli("build", str(specs), "--out", str(tmp_path / "lp_pkg"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    code = "import torch, lp_pkg; print(lp_pkg.lazy_package(torch.tensor([1.5])).item())"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr


def test_cli_plot_of_a_formula_that_defeats_the_compiler_is_one_line(tmp_path, monkeypatch):
    """actgen plot compiles a spec of the user's own within the compile time limit, its
    failures one line and exit 2 as build's (it was a traceback, or ran on unbounded)."""
    import actgen.build
    from actgen.cli import main

    deep = "x"
    for _ in range(20):
        deep = f"sigmoid({deep})"
    spec = tmp_path / "deep.yaml"
    spec.write_text(f"name: deep\nformula: {deep}\n")
    monkeypatch.setattr(actgen.build, "MAX_COMPILE_SECONDS", 2)
    out = tmp_path / "deep.png"
    assert main(["plot", "deep", "--specs", str(spec), "--out", str(out)]) == 2
    assert not out.exists()


def test_cli_draw_bounds_with_an_input_exit_2_nothing_written(tmp_path):
    (tmp_path / "noisy.yaml").write_text("name: noisy\ndoc: a draw\nformula: where(x > 0, x, uniform(x, 1) * x)\n")
    out = tmp_path / "pkg"
    r = _cli("build", str(tmp_path / "noisy.yaml"), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"{tmp_path / 'noisy.yaml'}:3: formula: uniform(lo, hi): the bounds must not depend on the input x "
        "(they are numbers, constants or params) at column 17"]
    assert not out.exists()


def test_cli_bad_spec_leaves_existing_output_untouched(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "good.yaml").write_text(GOOD)
    out = tmp_path / "pkg"
    assert _cli("build", str(specs), "--out", str(out), cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (specs / "good.yaml").write_text(GOOD.replace("beta * x", "beta * q"))
    r = _cli("build", str(specs), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "unknown name 'q'" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_injection_through_doc_is_escaped(tmp_path):
    doc = 'ends here """ ; import os; os.system("touch pwned") ; """ back\\slash \\x41 tab\tok'
    import yaml

    (tmp_path / "evil.yaml").write_text(yaml.safe_dump({"name": "evil", "formula": "x * 2", "doc": doc}))
    out = tmp_path / "evilpkg"
    r = _cli("build", str(tmp_path / "evil.yaml"), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check = (
        "import importlib, torch; m = importlib.import_module('evilpkg.evil');"
        "assert m.evil(torch.ones(2)).tolist() == [2.0, 2.0];"
        f"assert {doc.splitlines()[0][:20]!r} in m.evil.__doc__;"
        "assert m.__doc__.count('back\\\\slash') == 1"
    )
    r = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "pwned").exists()


def test_injection_through_names_is_rejected():
    for text in [
        "name: 'a; import os'\nformula: x\n",
        "name: a\nformula: x\nparams:\n  'b): pass\\nimport os #': 1\n",
        "name: a\nformula: x\nconstants:\n  '__class__': 1\n",
        "name: a\nformula: x\nclass_name: 'A(object): pass\\nimport os\\nclass B'\n",
        "name: a\nformula: x\ninputs: ['x; import os']\n",
    ]:
        with pytest.raises(SpecError):
            load_spec(text)


def test_problems_come_in_line_order_once_each(tmp_path):
    """A spec's problems are listed by line, and a variable refused by name (not ASCII, a
    keyword, a torch.nn.Module attribute) is not also an unknown name of the formula; a
    package named as a keyword, and log(0), say what they are."""
    text = "name: multi\nformula: x * foo * forward * α\nparams:\n  α: 1.0\n  lambda: 2.0\nconstants:\n" \
           "  forward: 2.0\ndoc: 5\n"
    with pytest.raises(SpecError) as info:
        load_spec(text, "m.yaml")
    assert info.value.problems == [
        "m.yaml:2: formula: unknown name 'foo' (known names: x; constants: pi, E) at column 5",
        "m.yaml:4: params: 'α' is not a valid name (ASCII letters, digits and _, starting with a letter)",
        "m.yaml:5: params: 'lambda' is a Python keyword, which a name cannot be",
        "m.yaml:7: constants: 'forward' is an attribute of torch.nn.Module, which the generated module is",
        "m.yaml:8: doc: must be a string",
    ]
    assert load_spec('name: a\nformula: x\ndoc: "two\\r\\nlines"\n', "m.yaml").doc == "two\r\nlines"
    with pytest.raises(SpecError, match=r"m.yaml:2: formula: a constant here is infinite or undefined \(a division "
                                        r"by zero, or the log of 0\?\) at column 3"):
        load_spec("name: a\nformula: x*log(0)\n", "m.yaml")
    (tmp_path / "a.yaml").write_text("name: a\nformula: x * 2\n")
    r = _cli("build", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "class"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"{tmp_path / 'class'}:0: --out: 'class' is a Python keyword, so it cannot be a package name"
