"""Packaging: kernels/ is the package siglip_fast.kernels, and stays inert when imported under another name."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import siglip_fast.kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_package_exports_the_functionals():
    for name in ("attention", "patch_embed", "layer_norm", "linear", "sigmoid_loss"):
        assert callable(getattr(siglip_fast.kernels, name))
        assert callable(getattr(siglip_fast.kernels, f"{name}_reference"))


def test_top_level_kernels_import_does_not_register_the_ops_twice(monkeypatch):
    """With the checkout's root on sys.path, `import kernels` (which transformers does, probing for the PyPI package
    of that name) finds this folder; it must not import the kernel modules a second time, which would register
    their torch custom ops twice and crash the dispatcher later."""
    monkeypatch.syspath_prepend(REPO)
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    module = importlib.import_module("kernels")
    if os.path.dirname(os.path.abspath(module.__file__)) != os.path.join(REPO, "kernels"):
        pytest.skip("another package named `kernels` is installed")
    assert module.__all__ == []
    assert not any(name.startswith("kernels.") for name in sys.modules)


_WITHOUT_TRITON = r'''
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as on a machine without the package
import torch
import siglip_fast
from siglip_fast import SiglipVisionConfig, SiglipVisionModel
from siglip_fast.kernels import attention, attention_reference

config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=28, patch_size=14)
model = SiglipVisionModel(config)  # backend="auto": eager on CPU
print("pooled", tuple(model(pixel_values=torch.randn(2, 3, 28, 28)).pooler_output.shape))
x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
print("loss", float(siglip_fast.sigmoid_loss(x, x, torch.tensor(2.3), torch.tensor(-10.0))))
q = torch.randn(1, 5, 2, 16)
sys.modules["siglip_fast.kernels.attention"]._CPU_OK = True  # past the device check, to the launch itself
print("reference", tuple(attention_reference(q, q, q).shape))
for name, call in (("model", lambda: model.set_backend("triton")(pixel_values=torch.randn(2, 3, 28, 28))),
                   ("kernel", lambda: attention(q, q, q))):
    try:
        call()
    except Exception as e:
        print(name, type(e).__name__, str(e).split(";")[0])
'''


def test_imports_and_eager_use_without_triton():
    """`import siglip_fast`, the eager/sdpa model and loss and the kernels' references work without triton; the
    Triton backend and a direct kernel launch say that triton is missing."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "pooled (2, 32)" in lines and "reference (1, 5, 2, 16)" in lines
    assert any(line.startswith("loss ") for line in lines)
    assert "model ValueError backend='triton' needs the triton package (Linux)" in lines
    assert any(line.startswith("kernel ") and "needs the triton package" in line for line in lines), lines
