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
