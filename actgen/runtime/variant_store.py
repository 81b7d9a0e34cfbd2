"""Compiled kernel variants found again in a fresh process without Triton's compile path.

Triton keeps every variant it compiles in its cache (~/.triton/cache), but a fresh process
finds one there only through `triton.compile`, whose key starts with a hash of Triton's own
sources and shared library: 0.4 s on an H200's host, once per process, before the first
kernel runs.  So when the JIT first launches a variant in a process, the runtime records
where Triton keeps it - its metadata and binary files - and how the JIT specialized the
kernel (the signature, constexprs and attributes it compiled with), in a small JSON file
under $ACTGEN_CACHE_DIR/variants.  A later process whose launch keys the same loads the
variant from those files (Triton's own CompiledKernel, as `triton.compile` does on a cache
hit) and launches it directly.

An entry's file name hashes everything the variant depends on:
* the kernel: Triton's hash of its source and of everything it calls (JITFunction.cache_key);
* the launch's specialization (variants.variant_key: dtypes, alignments, ints as Triton
  specializes them, constexprs, warps);
* the GPU's target (backend, architecture, warp size);
* Triton's version and build (its compiler files' and shared library's sizes and times);
* what changes a compile: Triton's cache-invalidating environment variables, every TRITON_*
  variable, and its debug and instrumentation settings.
On loading, the kernel's specialization must hash as it did when recorded and the binary as
it was written; anything missing or different is dropped, and the JIT compiles as before.
The files are as trusted as Triton's cache they point into.  ACTGEN_VARIANT_STORE=0 turns
the store off; it is never used while Triton's JIT hooks are set.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

FORMAT = 1


def enabled() -> bool:
    return os.environ.get("ACTGEN_VARIANT_STORE", "1") != "0"


def root() -> Path:
    from actgen.cache import cache_dir

    return cache_dir() / "variants"


# ---- a value of a kernel's specialization <-> JSON, types kept (a tuple is not a list) ----


class Unstorable(TypeError):
    """A specialization value the store does not write (the JIT keeps such a variant)."""


def encode(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"dtype": str(value)}
    raise Unstorable(f"{type(value).__name__} in a kernel's specialization")


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"tuple"}:
            return tuple(decode(v) for v in value["tuple"])
        if set(value) == {"dtype"}:
            import triton.language as tl

            return tl.dtype(value["dtype"])
        raise ValueError(f"unknown value {value!r}")
    return value


def _encode_items(mapping: dict) -> list:
    return [[encode(k), encode(v)] for k, v in mapping.items()]


def _decode_items(items: list) -> dict:
    return {decode(k): decode(v) for k, v in items}


# ---- what a variant depends on ----


_TRITON_BUILD: str | None = None


def triton_build() -> str:
    """Triton's version and its install's compiler files and shared library (path, size, time):
    a reinstall or an edit of Triton changes it.  Stats a few files, once per process."""
    global _TRITON_BUILD
    if _TRITON_BUILD is None:
        import triton

        base = Path(triton.__file__).resolve().parent
        parts = [triton.__version__]
        files = [base / "compiler" / "compiler.py", base / "runtime" / "jit.py"]
        files += sorted((base / "_C").glob("libtriton*"))
        files += sorted((base / "backends").glob("*/compiler.py")) + sorted((base / "backends").glob("*/driver.py"))
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
        _TRITON_BUILD = "\n".join(parts)
    return _TRITON_BUILD


def compile_environment() -> str:
    """What changes what Triton compiles, besides the kernel and its specialization."""
    from triton import knobs

    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars
        invalidating = get_cache_invalidating_env_vars()
    except ImportError:
        invalidating = {}
    env = {k: v for k, v in os.environ.items() if k.startswith("TRITON_")}
    settings = (getattr(knobs.runtime, "debug", None), getattr(knobs.compilation, "instrumentation_mode", None),
                getattr(knobs.compilation, "fpsan_homomorphic_casts", None))
    return repr((sorted(invalidating.items()), sorted(env.items()), settings))


def usable(kernel) -> bool:
    """Whether a launch of kernel may skip Triton's JIT on its first launch in a process: not
    where a hook expects to see the JIT compile, or where Triton is told to always compile."""
    from triton import knobs

    runtime, compilation = knobs.runtime, knobs.compilation
    return not (getattr(runtime, "jit_cache_hook", None) or getattr(runtime, "jit_post_compile_hook", None)
                or getattr(runtime, "add_stages_inspection_hook", None) or getattr(compilation, "always_compile", False)
                or getattr(kernel, "pre_run_hooks", None) or getattr(kernel, "debug", None))


def _stable(part) -> str:
    """A part of a variant key as text that is the same in every process."""
    if isinstance(part, type):
        return part.__name__
    if isinstance(part, tuple):
        return "(" + ",".join(_stable(p) for p in part) + ")"
    return repr(part)


def entry_name(kernel, key: tuple, target) -> str:
    """The file name of a variant's entry: key is variants.variant_key (the kernel's id and the
    device index are left out; the kernel enters by its hash, the device by its target)."""
    text = "\n".join((f"format {FORMAT}", kernel.cache_key, _stable(key[2:]), repr(target), triton_build(),
                      compile_environment()))
    return hashlib.sha256(text.encode()).hexdigest() + ".json"


# ---- entries ----


class VariantStore:
    """Entries under `directory` (default: root())."""

    def __init__(self, directory: Path | None = None):
        self._directory = directory
        self.loaded = 0         # variants loaded from entries, so far
        self.recorded = 0       # entries written

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else root()

    def load(self, kernel, key: tuple, target):
        """The compiled variant the entry for (kernel, key, target) names, or None."""
        path = self.directory / entry_name(kernel, key, target)
        try:
            entry = json.loads(path.read_text())
        except OSError:
            return None
        except ValueError:
            _remove(path)
            return None
        try:
            compiled = self._compiled(kernel, entry, target)
        except Exception:  # noqa: BLE001  (a stale or damaged entry: the JIT compiles instead)
            compiled = None
        if compiled is None:
            _remove(path)
            return None
        self.loaded += 1
        return compiled

    @staticmethod
    def _compiled(kernel, entry: dict, target):
        from triton.compiler import CompiledKernel

        if entry.get("format") != FORMAT:
            return None
        src = _source(kernel, entry)
        if src.hash() != entry["src_hash"]:
            return None
        group = entry["group"]
        if not all(os.path.isfile(p) for p in group.values()):
            return None
        compiled = CompiledKernel(src, group, entry["hash"])
        if hashlib.sha256(compiled.kernel).hexdigest() != entry["binary_sha256"] or compiled.metadata.target != target:
            return None
        return compiled

    def record(self, kernel, key: tuple, target, compiled) -> bool:
        """Write the entry for a variant the JIT compiled (or found in Triton's cache)."""
        try:
            entry = self._entry(compiled, target)
        except Exception:  # noqa: BLE001  (not a variant the store can describe: the JIT keeps it)
            entry = None
        if entry is None:
            return False
        directory, tmp = self.directory, None
        try:                                    # written whole, then renamed: a reader sees all or nothing
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(tmp, directory / entry_name(kernel, key, target))
        except OSError:
            if tmp is not None:
                _remove(Path(tmp))
            return False
        self.recorded += 1
        return True

    @staticmethod
    def _entry(compiled, target) -> dict | None:
        from triton.compiler import ASTSource, make_backend

        src = getattr(compiled, "src", None)
        if not isinstance(src, ASTSource) or compiled.metadata.target != target:
            return None
        binary_ext = make_backend(target).binary_ext
        group = {name: path for name, path in compiled.metadata_group.items()
                 if name.endswith(".json") or name.endswith("." + binary_ext)}
        if len(group) != 2:
            return None
        entry = {"format": FORMAT, "name": compiled.name, "signature": _encode_items(src.signature),
                 "constants": _encode_items(src.constants), "attrs": _encode_items(src.attrs),
                 "src_hash": src.hash(), "group": group, "hash": compiled.hash,
                 "binary_sha256": hashlib.sha256(compiled.kernel).hexdigest()}
        # what a later process rebuilds from the file must be what the JIT compiled
        again = _source(src.fn, json.loads(json.dumps(entry)))
        if (again.hash(), again.signature, again.constants, again.attrs) != (src.hash(), src.signature, src.constants,
                                                                            src.attrs):
            return None
        return entry


def _source(kernel, entry: dict):
    """The kernel's specialization an entry records, as the ASTSource the JIT compiled."""
    from triton.compiler import ASTSource

    return ASTSource(kernel, _decode_items(entry["signature"]), _decode_items(entry["constants"]),
                     _decode_items(entry["attrs"]))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


STORE = VariantStore()
