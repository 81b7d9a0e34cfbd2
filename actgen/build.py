"""Specs -> a generated package on disk: byte-identical output, atomic writes, --check."""
from __future__ import annotations

import keyword
import multiprocessing
import os
import re
import secrets
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .codegen import is_generated, render_module, render_package_init
from .derive import derive
from .spec import Spec, SpecError, load_specs
from .timelimit import TooSlow, time_limit


def render_package(package: str, specs: list[Spec], jobs: int = 1) -> dict[str, str]:
    """file name -> text for the whole package (pure: no file I/O; each compile within its
    time limit), the modules compiled in up to `jobs` processes; a spec that fails to compile
    is the error of the first such in the specs' order, as one by one."""
    if jobs > 1 and len(specs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        # (fork: the workers derive and render, in sympy and mpmath; nothing of torch's runs)
        with multiprocessing.get_context("fork").Pool(min(jobs, len(specs))) as pool:
            texts = pool.map(_module_text, specs, chunksize=1)
    else:
        texts = map(_module_text, specs)        # (lazily: the first failure stops it)
    files = {}
    for spec, text in zip(specs, texts):
        if isinstance(text, SpecError):
            raise text
        files[f"{spec.name}.py"] = text
    files["__init__.py"] = render_package_init(package, specs)
    return files


def _module_text(spec: Spec) -> str | SpecError:
    """A spec's module, compiled within compile_guard, or the SpecError that raised (handed
    back, out of a worker)."""
    try:
        with compile_guard(spec):
            return render_module(derive(spec))
    except SpecError as exc:
        return exc


#: Seconds one formula may take to compile (the catalogue's slowest takes under 2 on a
#: 2-vCPU VM); past them it is refused as too complex: a spec is untrusted input, and
#: symbolic work can grow without bound (sigmoid nested 20 deep, exp 7 deep).
MAX_COMPILE_SECONDS = 60


@contextmanager
def _compile_time_limit(spec: Spec):
    """time_limit(MAX_COMPILE_SECONDS), its TooSlow reported as the spec's problem."""
    try:
        with time_limit(MAX_COMPILE_SECONDS):
            yield
    except TooSlow:
        raise SpecError([f"{spec.source}:{spec.formula_line}: formula: too complex: compiling it took over "
                         f"{MAX_COMPILE_SECONDS} s"]) from None


@contextmanager
def compile_guard(spec: Spec):
    """Work on compiling a spec (deriving, rendering, importing the module), where a formula
    that passed validation and still defeats the compiler (sympy failing on some construct,
    or taking over MAX_COMPILE_SECONDS) is reported as the spec's problem - `path:line:
    formula: ...`, as SpecError - not as a traceback."""
    with _compile_time_limit(spec):
        try:
            yield
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is this formula's
            raise _cannot_compile(spec, exc) from None


def derive_spec(spec: Spec):
    """derive(spec) within compile_guard."""
    with compile_guard(spec):
        return derive(spec)


def _cannot_compile(spec: Spec, exc: Exception) -> SpecError:
    reason = f"{type(exc).__name__}: {exc}"
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    return SpecError([f"{spec.source}:{spec.formula_line}: formula: cannot be compiled ({reason})"])


@dataclass
class BuildResult:
    out: Path
    changed: list[str]       # files written (or, with check, that would be)
    removed: list[str]       # stale generated files (removed, or would be)


#: Names a generated package must not take: it would shadow what it or its users import.
_SHADOWED = frozenset({"torch", "triton", "actgen", "numpy", "sympy", "yaml", "mpmath"}) | frozenset(sys.stdlib_module_names)


def package_name(out: Path) -> str:
    try:
        name = Path(out).resolve().name
    except (OSError, RuntimeError) as exc:      # (a symlink loop: RuntimeError before Python 3.13)
        raise SpecError([f"{out}:0: --out: cannot be resolved ({getattr(exc, 'strerror', None) or exc})"]) from None
    if keyword.iskeyword(name):
        raise SpecError([f"{out}:0: --out: '{name}' is a Python keyword, so it cannot be a package name"])
    if not name.isidentifier():
        raise SpecError([f"{out}:0: --out: '{name}' is not a Python identifier, so it cannot be a package name"])
    if name.startswith("__") or name in _SHADOWED:
        raise SpecError([f"{out}:0: --out: '{name}' would shadow a module of that name; choose another package name"])
    return name


def _existing(out: Path) -> dict[str, str]:
    """The package's modules as they are (a file that is not UTF-8 is no module actgen wrote)."""
    if not out.is_dir():
        return {}
    return {p.name: _read(p) for p in sorted(out.glob("*.py")) if p.is_file()}


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _check_out(out: Path, old: dict[str, str]):
    """out is new, an empty directory, or a package actgen wrote (its __init__.py marked, or
    every file in it a marked module: a first build cut short before its __init__.py):
    anything else is the user's, and a build never writes over it."""
    if out.exists() and not out.is_dir():
        raise SpecError([f"{out}:0: --out: exists and is not a directory"])
    if not out.exists() or is_generated(old.get("__init__.py", "")):
        return
    others = sorted(p.name for p in out.iterdir()
                    if p.name != "__pycache__" and not _TEMP.fullmatch(p.name)
                    and not is_generated(old.get(p.name) or (_read(p) if p.suffix == ".py" and p.is_file() else "")))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise SpecError([f"{out}:0: --out: is a directory actgen did not write (it holds {shown}); "
                         "give a new or empty directory, or a package actgen built"])


def _check_targets(out: Path, old: dict[str, str], changed: list[str]):
    """Every file a build would write is new or one actgen wrote: a module of the user's in
    the package (a spec named as it) is never written over, nor anything that is no file."""
    for name in changed:
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise SpecError([f"{path}:0: --out: is not a plain file, so the build cannot write {name}"])
        if path.exists() and not is_generated(old.get(name) or _read(path)):
            # (a module that appeared since `old` was read: another build into out at once)
            raise SpecError([f"{path}:0: --out: is a file actgen did not write; a build would replace it "
                             f"(rename the spec {name[:-3]!r} or move the file)"])


def build(spec_paths: list[Path], out: Path, check: bool = False, jobs: int = 1) -> BuildResult:
    out = Path(out)
    package = package_name(out)
    specs = load_specs(spec_paths)                   # raises SpecError: nothing written
    try:
        old = _existing(out)
        _check_out(out, old)
    except OSError as exc:          # (a name too long for the file system)
        raise SpecError([f"{out}:0: --out: cannot be used ({exc.strerror or exc})"]) from None
    files = render_package(package, specs, jobs)
    changed = [n for n, text in files.items() if old.get(n) != text]
    _check_targets(out, old, changed)
    removed = [n for n, text in old.items() if n not in files and is_generated(text)]
    result = BuildResult(out, changed, removed)
    if check or not (changed or removed):
        return result
    try:
        _write(out, {n: files[n] for n in changed}, removed)
    except OSError as exc:
        raise SpecError([f"{out}:0: --out: cannot write there ({exc.strerror or exc})"]) from None
    return result


#: _write's temp files (one left by a build cut short is no file of the user's)
_TEMP = re.compile(r"\.[A-Za-z_]\w*\.py\.\d+\.[0-9a-f]{8}\.tmp")


def _write(out: Path, files: dict[str, str], removed: list[str]):
    """Each file written whole into a temp file beside it, then renamed over it (a reader
    sees the old file or the new one); the modules first, __init__.py (which names them)
    next, stale generated modules last.  Nothing else in out is touched."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == "__init__.py"):
        tmp = out / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)     # (mode: the umask's)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(files[name])
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
    for name in removed:
        (out / name).unlink(missing_ok=True)
