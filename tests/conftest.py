"""Test setup: Triton kernels run on CPU tensors under Triton's interpreter.

TRITON_INTERPRET must be set before triton is imported, so it is set here, first.  Tests
pick the implementation with `actgen.runtime.use_backend("torch" | "triton")`.  The
ahead-of-time GPU compile checks run in a subprocess without the interpreter.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from actgen.runtime import HAS_TRITON, use_backend  # noqa: E402

BACKENDS = ["torch"] + (["triton"] if HAS_TRITON else [])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "actgen-cache"))


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once on the eager fallback and once on the Triton kernels (interpreter)."""
    with use_backend(request.param):
        yield request.param


@pytest.fixture
def triton_backend():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    with use_backend("triton"):
        yield "triton"


@pytest.fixture
def torch_backend():
    with use_backend("torch"):
        yield "torch"


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
