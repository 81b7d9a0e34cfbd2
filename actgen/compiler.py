"""`actgen.compile`: a formula string -> an imported generated module, through a cache.

The cache is content-addressed (a hash of the arguments and of the compiler's own source) under
$ACTGEN_CACHE_DIR (default: $XDG_CACHE_HOME/actgen or ~/.cache/actgen), so a second
process finds the module and imports it without touching sympy.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import re
from pathlib import Path
from types import ModuleType

from .cache import cache_dir
from .version import COMPILER_VERSION


# What generated code depends on: the generator and the runtime it imports.  A change to
# any of these files gives new cache keys, so a cached module never outlives its compiler.
_GENERATOR_SOURCES = ("version.py", "spec.py", "formula.py", "functions.py", "derive.py", "precision.py", "native.py", "build.py",
                      "printers/*.py", "codegen/*.py", "runtime/*.py")


@functools.lru_cache(maxsize=None)
def generator_fingerprint() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for pattern in _GENERATOR_SOURCES:
        for path in sorted(root.glob(pattern)):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _label(name) -> str:
    """How compile's errors name the call: `<compile NAME>`, the name as repr() writes it
    where it is not a plain identifier (control characters are not echoed raw)."""
    if not isinstance(name, str):
        return "<compile ?>"
    if not (name.isascii() and name.isidentifier() and len(name) <= 64):
        name = repr(name[:64]) + ("..." if len(name) > 64 else "")
    return f"<compile {name}>"


def _call_problems(problems, source: str, label: str) -> list[str]:
    """A spec's problem lines said of the call: `source:LINE: field: problem` (the line of
    the YAML compile writes, which the caller never sees) -> `label: field: problem`."""
    pattern = re.compile(re.escape(source) + r":\d+: ")
    return [pattern.sub(lambda _: label + ": ", line, count=1) for line in problems]


def _spec_mapping(formula, name, params, constants, inputs, doc, class_name, precision="auto", checks=None):
    """compile's arguments as a spec's fields: of the types the spec format has (anything
    else is a SpecError naming the argument); load_spec checks the rest."""
    def fail(field, problem):
        from .spec import SpecError         # (here: a cached module's import needs no sympy)

        raise SpecError([f"{_label(name)}: {field}: {problem}"])

    def number(field, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(field, f"must be a number, got {v!r}")
        try:
            return float(v)
        except OverflowError:           # (an int past float64's range)
            fail(field, f"must be a finite number, got an int of {len(str(abs(v)))} digits")

    def mapping(field, m):
        if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
            fail(field, f"must be a dict with str keys, got {m!r}")
        return m

    for field, v in (("formula", formula), ("name", name), ("doc", doc), ("precision", precision)):
        if not isinstance(v, str):
            fail(field, f"must be a str, got {type(v).__name__}")
    if class_name is not None and not isinstance(class_name, str):
        fail("class_name", f"must be a str, got {type(class_name).__name__}")
    spec = {"name": name, "formula": formula}
    if precision != "auto":
        spec["precision"] = precision
    if doc:
        spec["doc"] = doc
    if inputs is not None:
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(v, str) for v in inputs):
            fail("inputs", f"must be a list of names, got {inputs!r}")
        spec["inputs"] = list(inputs)
    if params:
        spec["params"] = {}
        for k, v in mapping("params", params).items():
            if isinstance(v, dict):
                v = dict(mapping(f"params.{k}", v))
                if "init" in v:
                    v["init"] = number(f"params.{k}.init", v["init"])
                for field, value in v.items():      # (load_spec says what is wrong with the rest)
                    if not isinstance(value, (bool, int, float, str)):
                        fail(f"params.{k}.{field}", f"must be a number, a bool or a str, got {value!r}")
                spec["params"][k] = v
            else:
                spec["params"][k] = number(f"params.{k}", v)
    if constants:
        spec["constants"] = {k: number(f"constants.{k}", v) for k, v in mapping("constants", constants).items()}
    if class_name:
        spec["class_name"] = class_name
    if checks:
        m = mapping("checks", checks)
        if not all(isinstance(v, str) for v in m.values()):
            fail("checks", f"must map conditions to str messages, got {checks!r}")
        spec["checks"] = dict(m)
    return spec


def compile(formula: str, name: str = "activation", *, params=None, constants=None, inputs=None,
            doc: str = "", class_name: str | None = None, precision: str = "auto", checks=None) -> ModuleType:
    """Compile a formula into a module with `<name>`, `<ClassName>` and `<ClassName>Function`.

    params: {name: init} or {name: {"init": v, "per_channel": bool}}; constants: {name: default};
    inputs: e.g. ["a", "b"] for a gated activation; precision: the spec field (auto, float32,
    float64); checks: {condition on the constants: message} (the spec field).  Raises
    actgen.SpecError on bad input.
    """
    mapping = _spec_mapping(formula, name, params, constants, inputs, doc, class_name, precision, checks)
    canonical = json.dumps(mapping, sort_keys=True)
    key = hashlib.sha256(f"{COMPILER_VERSION}\n{generator_fingerprint()}\n{canonical}".encode()).hexdigest()[:20]
    package = f"actgen_{key}"
    pkg_dir = cache_dir() / package
    module_file = pkg_dir / f"{name}.py" if isinstance(name, str) and name.isidentifier() else None
    if module_file is None or not module_file.is_file():
        import yaml

        from .build import build

        pkg_dir.parent.mkdir(parents=True, exist_ok=True)
        spec_file = pkg_dir.parent / f"{package}.yaml"
        text = yaml.safe_dump(mapping, sort_keys=False)
        from .spec import SpecError, load_spec

        label = _label(name)
        try:
            load_spec(text, label)               # validate before anything is written
        except SpecError as exc:
            raise SpecError(_call_problems(exc.problems, label, label)) from None
        spec_file.write_text(text, encoding="utf-8")
        try:
            build([spec_file], pkg_dir)
        except SpecError as exc:        # (a formula the compiler refuses: said of the call, not the file)
            spec_file.unlink(missing_ok=True)
            raise SpecError(_call_problems(exc.problems, str(spec_file), label)) from None
        module_file = pkg_dir / f"{name}.py"
    return _import(package, module_file)


def _import(package: str, path: Path) -> ModuleType:
    """The module, imported as package.module (the package found in the cache by
    actgen.cache.CompiledPackages, which importing actgen puts in place): its classes pickle
    by that name."""
    return importlib.import_module(f"{package}.{path.stem}")
