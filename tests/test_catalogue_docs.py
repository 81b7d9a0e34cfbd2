"""The browsable catalogue: `actgen list/show/plot`, and the generated docs are current.

docs/catalogue.md is regenerated in memory and compared with the file (cheap); the plots and
docs/accuracy.md (minutes to regenerate) are checked to cover every entry, and the misses
accuracy.md reports to be exactly the documented ones.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

import actgen.ops as ops
from actgen import catalogue as C
from actgen.cli import main
from actgen.spec import load_specs

ROOT = Path(__file__).resolve().parents[1]
SPECS = load_specs([ROOT / "specs"])
DOCS = ROOT / "docs"

TORCH_NN = ["relu", "relu6", "sigmoid", "tanh", "leaky_relu", "prelu", "elu", "celu", "selu", "gelu", "gelu_tanh",
            "silu", "mish", "hardtanh", "hardsigmoid", "hardswish", "softshrink", "hardshrink", "tanhshrink",
            "softplus", "softsign", "threshold", "logsigmoid", "rrelu", "glu"]
CLASSIC = ["custom_smooth", "scaled_activation", "parametric_activation", "soft_clip", "adaptive_mixture",
           "adaptive_mixture4", "polynomial", "learnable_activation", "well_documented"]
MODERN = ["swiglu", "geglu", "geglu_tanh", "reglu", "bilinear", "quick_gelu", "relu_squared", "star_relu", "xielu",
          "pau", "hard_mish", "gaussian", "sine", "tanh_exp", "logish", "soft_exponential"]


def test_the_catalogue_is_complete():
    names = {s.name for s in SPECS}
    missing = [n for n in TORCH_NN + CLASSIC + MODERN if n not in names]
    assert not missing, missing
    for s in SPECS:
        assert getattr(ops, s.name) and getattr(ops, s.class_name) and getattr(ops, s.class_name + "Function")
        assert s.doc.strip(), f"{s.name} has no doc"


def test_torch_entries_are_named_as_torch():
    classes = {s.name: s.class_name for s in SPECS}
    assert classes["leaky_relu"] == "LeakyReLU" and classes["prelu"] == "PReLU" and classes["gelu"] == "GELU"
    assert classes["hardswish"] == "Hardswish" and classes["logsigmoid"] == "LogSigmoid" and classes["glu"] == "GLU"
    constants = {s.name: [c.name for c in s.constants] for s in SPECS}
    assert constants["hardtanh"] == ["min_val", "max_val"] and constants["softplus"] == ["beta", "threshold"]
    assert constants["threshold"] == ["threshold", "value"] and constants["rrelu"] == ["lower", "upper"]
    assert constants["softshrink"] == constants["hardshrink"] == ["lambd"]


def test_list_prints_the_catalogue(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for s in SPECS:
        assert re.search(rf"^{s.name}\s+{s.class_name}\s", out, re.M), s.name


def test_show_prints_formula_derivatives_and_source(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["show", "tanhshrink"]) == 0
    out = capsys.readouterr().out
    assert "formula: x - tanh(x)" in out
    assert "df/dx = tanh(x)**2" in out
    assert "actgen/ops/tanhshrink.py" in out
    assert main(["show", "no_such_activation"]) == 2
    assert main(["show", "tanhshrink", "--source"]) == 0
    out = capsys.readouterr().out
    assert out.split("generated source (tanhshrink.py):\n", 1)[1] == (ROOT / "actgen/ops/tanhshrink.py").read_text()


def test_show_of_specs_of_ones_own_names_no_built_in_file(capsys, tmp_path):
    """With --specs, show pointed at actgen/ops/NAME.py, which is the built-in library's (or
    nothing); it says how to see or write the module instead."""
    (tmp_path / "tanhshrink.yaml").write_text("name: tanhshrink\nformula: x - 2*tanh(x)\n")
    assert main(["show", "tanhshrink", "--specs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "actgen/ops/" not in out and "`--source` prints it" in out
    assert main(["show", "tanhshrink", "--specs", str(tmp_path), "--source"]) == 0
    assert "_y = x - 2.0*torch.tanh(x)" in capsys.readouterr().out


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_draws_a_png(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "mish.png"
    assert main(["plot", "mish", "--out", str(out)]) == 0
    assert _png_size(out) == (640, 400)
    assert main(["plot", "swiglu", "--out", str(tmp_path / "g.png")]) == 0      # gated: f(a, b=1)
    first = out.read_bytes()
    C.plot(next(s for s in SPECS if s.name == "mish"), out)
    assert out.read_bytes() == first                                          # deterministic


def test_plot_writes_every_format_it_accepts(tmp_path, monkeypatch):
    """Every image format `actgen plot --out` accepts is written (the PNG's reproducibility
    metadata, passed to every format, made svg, jpg, tif, webp... a traceback), and each file
    is what PIL (or for vector formats their text) reads as that format."""
    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    matplotlib.use("Agg")
    monkeypatch.chdir(ROOT)
    magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml", "svgz": b"\x1f\x8b", "eps": b"%!PS",
             "ps": b"%!PS", "jpg": b"\xff\xd8", "jpeg": b"\xff\xd8", "gif": b"GIF8", "tif": b"II*\0",
             "tiff": b"II*\0", "webp": b"RIFF"}
    for fmt in sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}):
        out = tmp_path / f"mish.{fmt}"
        assert main(["plot", "mish", "--out", str(out)]) == 0, fmt
        data = out.read_bytes()
        assert data, fmt
        if fmt in magic:
            assert data.startswith(magic[fmt]), fmt
    assert main(["plot", "mish", "--out", str(tmp_path / "mish.pgf")]) == 2     # (LaTeX's, not an image)


def test_docs_of_specs_of_ones_own(tmp_path, capsys):
    """`actgen docs --specs DIR`: the accuracy table scores the specs' own ops (compiled now;
    it looked them up in actgen.ops and failed with a traceback after writing half its
    output), and the docs say where they came from and the grid's step; a bad --step or
    --specs is one line, exit 2, nothing written."""
    specs = tmp_path / "mine"
    specs.mkdir()
    (specs / "twice.yaml").write_text("name: twice\nformula: 2 * x\n")
    (specs / "softsign_b.yaml").write_text("name: softsign_b\nformula: x / (b + abs(x))\nparams: {b: 1.0}\n")
    out = tmp_path / "my docs"
    assert main(["docs", "--specs", str(specs), "--out", str(out), "--step", "1", "--no-plots", "--quiet"]) == 0
    acc = (out / "accuracy.md").read_text()
    cat = (out / "catalogue.md").read_text()
    command = f"Generated by `actgen docs --specs {specs} --out '{out}'`"     # (the command that made them, whole)
    assert command in acc and command in cat
    assert "actgen.ops" not in cat and "actgen/ops" not in cat      # (the user's ops are not the built-in library's)
    assert "`twice` / `Twice`" in cat and f"`actgen build {specs} --out <out>`" in cat
    assert "2 activations," in cat
    assert "every multiple of 1 in [-20, 20]" in acc
    rows = {}
    for line in acc.splitlines():       # (the first table's rows: f and df on every run)
        if line.startswith("| ["):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert set(rows) == {"[twice](catalogue.md#twice)", "[softsign_b](catalogue.md#softsign_b)"}
    assert rows["[twice](catalogue.md#twice)"].split("|")[2:-1] == [" 0 "] * 8      # (2x: exact, every run)
    capsys.readouterr()
    for args, problem in ((["--step", "0"], "--step 0.0: must be a positive number"),
                          (["--specs", str(specs / "twice.yaml")], "not a directory of specs"),
                          (["--jobs", "0"], "--jobs 0: must be at least 1")):
        argv = ["docs", "--out", str(tmp_path / "none"), *args]
        if "--specs" not in args:
            argv += ["--specs", str(specs)]
        assert main(argv) == 2
        assert problem in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_plot_values_are_the_op():
    xs, y, g = C.plot_values(next(s for s in SPECS if s.name == "relu6"))
    assert xs[0] == -6 and xs[-1] == 6
    assert y.max() == 6 and y.min() == 0 and set(g.tolist()) == {0.0, 1.0}


def test_catalogue_md_is_current():
    assert (DOCS / "catalogue.md").read_text(encoding="utf-8") == C.catalogue_markdown(SPECS), \
        "docs/catalogue.md is stale: run `actgen docs`"


def test_every_entry_has_a_plot():
    for s in SPECS:
        assert _png_size(DOCS / "plots" / f"{s.name}.png") == (640, 400), s.name
    assert {p.stem for p in (DOCS / "plots").glob("*.png")} == {s.name for s in SPECS}


def test_accuracy_md_covers_every_entry_and_documents_its_misses():
    text = (DOCS / "accuracy.md").read_text(encoding="utf-8")
    for s in SPECS:
        assert f"| [{s.name}](catalogue.md#{s.name}) |" in text, s.name
    section = text.split("## Where the target is missed", 1)[1].split("\n## ", 1)[0]
    kinds = {"f": "f", "derivative": "df", "param gradient": "dp"}
    reported = {(m.group(1), kinds[m.group(2)])
                for m in re.finditer(r"^\* \*\*(\w+)\*\* \((f|derivative|param gradient)\)", section, re.M)}
    assert reported == set(C.KNOWN_MISSES), "docs/accuracy.md and KNOWN_MISSES disagree: run `actgen docs`"
    assert "not yet explained" not in section
    for name, formula, _ in C.REWRITE_EXAMPLES:
        assert f"`{formula}`" in text


def test_rrelu_documents_its_training_mode():
    text = (DOCS / "catalogue.md").read_text(encoding="utf-8")
    section = text.split("## rrelu", 1)[1].split("\n## ", 1)[0]
    assert "uniform(lower, upper)" in section and "not implemented" not in section
    assert "_r0 ~ U[0, 1) per element in training mode, 1/2 in evaluation mode" in section


@pytest.mark.parametrize("name", ["catalogue.md", "accuracy.md", "README.md"])
def test_docs_say_how_to_regenerate(name):
    assert "actgen docs" in (DOCS / name).read_text(encoding="utf-8")
