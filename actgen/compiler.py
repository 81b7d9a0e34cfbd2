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
import os
import re
import secrets
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
    root = cache_dir()
    pkg_dir = root / package
    if isinstance(name, str) and name.isidentifier() and _complete(pkg_dir, name):
        module = _import_whole(package, name)
        if module is not None:
            return module
        _discard(pkg_dir)               # (damaged: a file cut short or edited; built again below)
    import yaml

    from .spec import SpecError, load_spec

    label = _label(name)
    text = yaml.safe_dump(mapping, sort_keys=False)
    try:
        load_spec(text, label)               # validate before anything is written
    except SpecError as exc:
        raise SpecError(_call_problems(exc.problems, label, label)) from None
    _build_into(root, package, name, text, label)
    module = _import_whole(package, name)
    if module is None:
        raise ImportError(f"actgen.compile: the module built for {label} in {pkg_dir} does not import")
    return module


def _complete(pkg_dir: Path, name: str) -> bool:
    """Whether the cache holds the package whole (it appears there in one rename)."""
    return (pkg_dir / "__init__.py").is_file() and (pkg_dir / f"{name}.py").is_file()


def _build_into(root: Path, package: str, name: str, text: str, label: str) -> None:
    """Build the spec into root/package: in a folder of this call's own, renamed into place
    whole (a process killed midway, or a full disk, leaves no package half written; two
    processes compiling one formula at once both build, and the first rename stands)."""
    import shutil
    import tempfile

    from .build import build
    from .spec import SpecError

    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=root))
    except OSError as exc:
        raise OSError(exc.errno, f"actgen.compile: cannot write its cache at {root} ({exc.strerror or exc}); "
                                 "set ACTGEN_CACHE_DIR to a writable directory") from None
    try:
        spec_file = work / f"{package}.yaml"
        try:
            spec_file.write_text(text, encoding="utf-8")
            build([spec_file], work / package)
        except SpecError as exc:        # (a formula the compiler refuses: said of the call, not the file)
            raise SpecError(_call_problems(exc.problems, str(spec_file), label)) from None
        except OSError as exc:
            raise OSError(exc.errno, f"actgen.compile: cannot write its cache at {root} ({exc.strerror or exc})") from None
        for _ in range(2):
            try:
                os.rename(work / package, root / package)
                return
            except OSError:
                if _complete(root / package, name) and _import_whole(package, name) is not None:
                    return      # another process's build, renamed first
                _discard(root / package)        # (damaged: replaced by this build)
        raise OSError(f"actgen.compile: cannot put the package built for {label} in place at {root / package}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _discard(pkg_dir: Path) -> None:
    """Take a damaged package out of the cache (and out of this process's modules)."""
    import shutil
    import sys

    for mod in [m for m in sys.modules if m == pkg_dir.name or m.startswith(pkg_dir.name + ".")]:
        del sys.modules[mod]
    importlib.invalidate_caches()
    trash = pkg_dir.with_name(f".{pkg_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.discarded")
    try:
        os.rename(pkg_dir, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _import_whole(package: str, name: str) -> ModuleType | None:
    """The module package.name with its functional, or None where the cache's copy does not
    import or lacks it (a file cut short or edited by hand: SyntaxError, a missing name).
    The package is found in the cache by actgen.cache.CompiledPackages, which importing
    actgen puts in place: its classes pickle by that name."""
    try:
        module = importlib.import_module(f"{package}.{name}")
    except (ImportError, SyntaxError, AttributeError, NameError, ValueError):
        return None
    return module if callable(getattr(module, name, None)) else None
