"""Test set-up shared by every suite.

Without a GPU the Triton kernels run under the Triton interpreter, which must be switched on before triton is
first imported; `import torch` does not import triton, so it is safe to decide here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, otherwise the CPU under the Triton interpreter."""
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different but reproducible seed per test: fresh random inputs, never zeros, never shared."""
    seed = abs(hash(request.node.nodeid)) % (2**31)
    torch.manual_seed(seed)
    yield
