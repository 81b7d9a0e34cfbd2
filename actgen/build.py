"""Specs -> a generated package on disk: byte-identical output, atomic writes, --check."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .codegen import render_module, render_package_init
from .derive import derive
from .spec import Spec, SpecError, load_specs

GENERATED_MARK = "DO NOT EDIT"


def render_package(package: str, specs: list[Spec]) -> dict[str, str]:
    """file name -> text for the whole package (pure; no I/O)."""
    derivations, files = [], {}
    for spec in specs:
        d, files[f"{spec.name}.py"] = _compiled(spec)
        derivations.append(d)
    files["__init__.py"] = render_package_init(package, derivations)
    return files


def _compiled(spec: Spec):
    """(derivation, module text) of a spec (see derive_spec)."""
    d = derive_spec(spec)
    try:
        return d, render_module(d)
    except Exception as exc:  # noqa: BLE001 - any failure here is this formula's
        raise _cannot_compile(spec, exc) from None


def derive_spec(spec: Spec):
    """derive(spec), where a formula that passed validation and still defeats the compiler
    (sympy failing on some construct) is reported as the spec's problem - `path:line:
    formula: cannot be compiled (...)`, as SpecError - not as a traceback."""
    try:
        return derive(spec)
    except Exception as exc:  # noqa: BLE001 - any failure here is this formula's
        raise _cannot_compile(spec, exc) from None


def _cannot_compile(spec: Spec, exc: Exception) -> SpecError:
    reason = f"{type(exc).__name__}: {exc}"
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    return SpecError([f"{spec.source}:{spec.formula_line}: formula: cannot be compiled ({reason})"])


@dataclass
class BuildResult:
    out: Path
    changed: list[str]       # files written (or, with check, that would be)
    removed: list[str]       # stale generated files (removed, or would be)


def package_name(out: Path) -> str:
    name = Path(out).resolve().name
    if not name.isidentifier():
        raise SpecError([f"{out}:0: --out: '{name}' is not a Python identifier, so it cannot be a package name"])
    return name


def _existing(out: Path) -> dict[str, str]:
    if not out.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*.py"))}


def build(spec_paths: list[Path], out: Path, check: bool = False) -> BuildResult:
    out = Path(out)
    package = package_name(out)
    specs = load_specs(spec_paths)                   # raises SpecError: nothing written
    files = render_package(package, specs)
    old = _existing(out)
    changed = [n for n, text in files.items() if old.get(n) != text]
    removed = [n for n, text in old.items() if n not in files and GENERATED_MARK in text]
    result = BuildResult(out, changed, removed)
    if check or not (changed or removed):
        return result
    _write_atomically(out, files, keep={n: t for n, t in old.items() if n not in files and n not in removed})
    return result


def _write_atomically(out: Path, files: dict[str, str], keep: dict[str, str]):
    """Write the whole package into a sibling temp dir, then swap it in with renames."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        for name, text in {**keep, **files}.items():
            with open(tmp / name, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(backup)
            os.replace(out, backup)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
