"""Test set-up shared by every suite.

Without a GPU the Triton kernels run under the Triton interpreter, which must be switched on before triton is
first imported; `import torch` does not import triton, so it is safe to decide here.
"""

import os
import zlib

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
    """A different seed per test (fresh random inputs, never shared between tests), reproducible from the test id;
    SIGLIP_FAST_TEST_SEED=N shifts every seed to draw other inputs."""
    seed = zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("SIGLIP_FAST_TEST_SEED", "0"))
    torch.manual_seed(seed % 2**31)
    yield
