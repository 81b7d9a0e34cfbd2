"""Launch configurations per size bucket: tuned once per GPU, kept on disk.

A kernel launch has two knobs the math does not fix: the elements per program (the tile)
and the warps per program.  Small tensors run the default; for a large tensor (TUNE_MIN
elements or more) on a GPU, the first launch of each kernel, dtype, layout and size bucket
times every candidate on the call's own tensors and keeps the fastest - in memory for the
process and in a JSON file for the next one (ACTGEN_TUNING_CACHE, default
~/.cache/actgen/tuning.json; ACTGEN_TUNE=0 turns tuning off).  Every candidate computes the
same result: the kernels are element-wise, and param-gradient partial sums are sized from
the tile the launch used.  A backward with param gradients is timed with the torch ops that
sum its partial sums (launch.finish_param_grads), whose work the config sizes: one partial
sum per tile where it does not step.  A candidate whose compiled kernel spills registers is
left out (the default is always a candidate, and spill-free for every built-in kernel:
AOT-checked).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Config:
    tile: int           # elements per program (a power of two)
    num_warps: int
    step: bool = False  # a backward with param gradients: programs step through the tiles

    @property
    def label(self) -> str:
        return f"{self.tile}x{self.num_warps}" + ("-step" if self.step else "")


DEFAULT = Config(1024, 4)
# What the tuner times.  All move 128-bit vectors per thread (AOT-checked for each).
CANDIDATES = (Config(1024, 4), Config(2048, 4), Config(2048, 8), Config(4096, 8))
# ... and for 4- and 8-byte data also four elements a thread, still one 128-bit vector an
# access (16-bit data would take half of one): the smallest of the above won nearly every
# float32 kernel at 2**28 on an H200, swiglu's backward by more the smaller the tile
# (1.36 ms at 1024x4, 1.39 at 2048x8, 1.45 at 2048x4, 1.97 at 4096x8; roofline 1.24)
NARROW = (Config(512, 4), Config(1024, 8))


@functools.lru_cache(maxsize=None)
def candidates(dtype: torch.dtype, param_grad: bool = False) -> tuple[Config, ...]:
    """What the tuner times for data of dtype: CANDIDATES, with NARROW for 4- and 8-byte
    data; for a backward that sums param gradients each also with about PROGRAMS_PER_SM
    programs per SM stepping through the tiles (partial sums a few per program, not one per
    tile), which costs registers in the heaviest kernels - the timing decides."""
    configs = CANDIDATES + (NARROW if dtype.itemsize >= 4 else ())
    return configs + tuple(Config(c.tile, c.num_warps, True) for c in configs) if param_grad else configs


TUNE_MIN = 1 << 22      # below this, launch latency dominates and the default is kept
# (2: NARROW among the candidates for 4- and 8-byte data; 3: param-gradient backwards timed
# with their partial sums' sums: tuned afresh)
CACHE_VERSION = 3


def cache_path() -> Path:
    env = os.environ.get("ACTGEN_TUNING_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "actgen" / "tuning.json"


def _bucket(numel: int) -> int:
    """The size bucket's number: sizes within a factor 4 share one."""
    return (numel.bit_length() - 1) // 2


def size_bucket(numel: int) -> str:
    """Sizes within a factor 4 share a config: "2**22" covers [2**22, 2**24)."""
    return f"2**{_bucket(numel) * 2}"


@functools.lru_cache(maxsize=None)      # asked on every tuned launch
def kernel_id(kernel) -> str:
    """A stable name for a kernel: its module, name and a hash of its source."""
    fn = getattr(kernel, "fn", kernel)
    src = getattr(kernel, "src", None) or getattr(fn, "__qualname__", "")
    digest = hashlib.sha256(src.encode()).hexdigest()[:12]
    return f"{fn.__module__}.{fn.__name__}@{digest}"


@functools.lru_cache(maxsize=None)
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=25))


def _chosen_key(kernel, x: torch.Tensor, layout_kind: str) -> tuple:
    """A launch's key in Tuner._chosen: the kernel (by id: kernels live as long as the
    process), x's device and dtype, the layout and the size bucket."""
    return id(kernel), x.device, x.dtype, layout_kind, _bucket(x.numel())


class Tuner:
    """The configs chosen so far, backed by a JSON file."""

    def __init__(self, path: Path | None = None, bench=_bench_ms):
        self.path = path
        self.bench = bench
        self._table: dict | None = None
        # the choice per (kernel, device, dtype, layout, size bucket), as a Config: a launch
        # that finds its key here skips building the table's string key (host time per call)
        self._chosen: dict[tuple, Config] = {}
        # launch plans made on these choices (launch.Plan), by the ops that launch them
        self.plans: dict[tuple, object] = {}

    @staticmethod
    def tunable(x: torch.Tensor) -> bool:
        """Whether launches on tensors like x are ever tuned: on a GPU, from TUNE_MIN elements
        (whole size buckets: the answer is the same for every tensor of x's bucket)."""
        from .triton_lang import INTERPRET

        return x.is_cuda and x.numel() >= TUNE_MIN and not INTERPRET

    def enabled(self, x: torch.Tensor) -> bool:
        return (self.tunable(x) and os.environ.get("ACTGEN_TUNE", "1") != "0"
                and not torch.cuda.is_current_stream_capturing())

    def key(self, kernel, x: torch.Tensor, layout_kind: str) -> str:
        device = _device_name(x.device)
        import triton

        return "|".join((device, f"triton {triton.__version__}", kernel_id(kernel), str(x.dtype).removeprefix("torch."),
                         layout_kind, size_bucket(x.numel())))

    @property
    def table(self) -> dict:
        if self._table is None:
            self._table = self._read()
        return self._table

    def _file(self) -> Path:
        return self.path or cache_path()

    def _read(self) -> dict:
        try:
            data = json.loads(self._file().read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        return {k: v for k, v in data.get("configs", {}).items() if isinstance(v, dict)}

    def _write(self, key: str, entry: dict) -> None:
        path = self._file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            merged = self._read()       # another process may have tuned other kernels meanwhile
            merged[key] = entry
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".json")
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": CACHE_VERSION, "configs": merged}, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError as exc:
            warnings.warn(f"actgen: could not save tuned launch configs to {path}: {exc}", stacklevel=3)

    def settled(self, kernel, x: torch.Tensor, layout_kind: str) -> Config | None:
        """The config chosen for good (by choose) for launches like this one, or None."""
        return self._chosen.get(_chosen_key(kernel, x, layout_kind))

    def choose(self, kernel, x: torch.Tensor, layout_kind: str, run, candidates=CANDIDATES) -> Config:
        """The config for this launch; run(config) launches the kernel with it (tuning times
        every candidate once, then the fastest is kept)."""
        fast = _chosen_key(kernel, x, layout_kind)
        chosen = self._chosen.get(fast)
        if chosen is not None:
            return chosen
        if not self.enabled(x):
            if not self.tunable(x):         # never tuned: kept, so later calls skip these checks
                self._chosen[fast] = DEFAULT
            return DEFAULT
        key = self.key(kernel, x, layout_kind)
        entry = self.table.get(key)
        if entry is not None:
            try:
                chosen = Config(int(entry["tile"]), int(entry["num_warps"]), bool(entry.get("step", False)))
                self._chosen[fast] = chosen
                return chosen
            except (KeyError, TypeError, ValueError):
                pass                      # a damaged entry is tuned again
        times = {}
        for cfg in candidates:
            compiled = run(cfg)                      # compiles it; a kernel that spills is not timed
            if cfg != DEFAULT and getattr(compiled, "n_spills", 0):
                continue
            times[cfg] = self.bench(lambda cfg=cfg: run(cfg))
        best = min(times, key=times.get)
        entry = {**asdict(best), "ms": {c.label: round(t, 5) for c, t in times.items()}}
        self.table[key] = entry
        self._write(key, entry)
        self._chosen[fast] = best
        return best


TUNER = Tuner()
