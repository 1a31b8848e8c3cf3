"""Packaging: kernels/ is imported as siglip_fast.kernels, and never shadows Hugging Face's `kernels` package, which
transformers >= 5.25 imports, when the checkout's root is on sys.path (pytest, `python -m`, `python -c` from the root).

kernels/ has no __init__.py: from the root's sys.path entry it is only a PEP 420 namespace portion, and the import
system takes a regular package of that name from any later entry (site-packages) first.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import pytest

import siglip_fast.kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("attention", "patch_embed", "layer_norm", "linear", "sigmoid_loss")


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run_from_root(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python argv...` with the checkout's root as the working directory, so that it is sys.path[0], as a user's
    `python -c` / `python -m` from the root has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_transformers_floor_is_the_test_extras():
    """tests/_tiny.py's floor (the SigLIP 2 parity tests' minversion) is the one pyproject.toml states."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from tests._tiny import TRANSFORMERS_FLOOR

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["test"]
    assert f"transformers>={TRANSFORMERS_FLOOR}" in extra


def test_each_op_module_exports_its_functional_and_reference():
    for name in OPS:
        module = importlib.import_module(f"siglip_fast.kernels.{name}")
        assert callable(getattr(module, name)) and callable(getattr(module, f"{name}_reference"))
    assert os.path.samefile(os.path.dirname(siglip_fast.kernels.__path__[0]), os.path.dirname(
        os.path.dirname(importlib.import_module("siglip_fast.kernels.attention").__file__)))


def test_the_root_offers_kernels_only_as_a_namespace_portion():
    """What the root's sys.path entry holds under the name `kernels`: no regular package (no __init__.py), so a
    regular `kernels` package anywhere later on sys.path wins; without one, `import kernels` is an empty
    namespace that imports none of the kernel modules (which would register their torch custom ops twice)."""
    assert not os.path.exists(os.path.join(REPO, "kernels", "__init__.py"))
    spec = importlib.machinery.PathFinder.find_spec("kernels", [REPO])
    assert spec is not None and spec.origin is None and spec.loader is None  # a namespace portion only
    assert list(spec.submodule_search_locations) == [os.path.join(REPO, "kernels")]


def test_import_kernels_from_the_root_never_gets_this_folder(monkeypatch):
    monkeypatch.syspath_prepend(REPO)
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    module = importlib.import_module("kernels")
    if _hf_kernels_installed():
        assert module.__file__ is not None and not module.__file__.startswith(os.path.join(REPO, ""))
    else:
        assert getattr(module, "__file__", None) is None  # the namespace: nothing of ours runs under this name
    assert not any(name.startswith("kernels.") and name.split(".")[1] in OPS for name in sys.modules)


def test_transformers_from_the_root():
    """The regression test of issue 20: from the checkout's root, transformers' hub-kernels integration (which
    imports Hugging Face's `kernels` when installed; transformers >= 5.25 always does) and its SigLIP models import,
    and transformers sees that package exactly when it is installed."""
    pytest.importorskip("transformers")
    code = (
        "import importlib.util, os, transformers\n"
        "from transformers import SiglipModel, SiglipConfig\n"
        "from transformers.utils import is_kernels_available\n"
        "if importlib.util.find_spec('transformers.integrations.hub_kernels'):\n"
        "    import transformers.integrations.hub_kernels\n"
        "import kernels\n"
        "print('kernels', getattr(kernels, '__file__', None))\n"
        "print('available', is_kernels_available())\n"
        "import siglip_fast, siglip_fast.kernels.attention\n"
        "print('siglip_fast', os.path.dirname(siglip_fast.kernels.attention.__file__))\n"
    )
    run = _run_from_root("-c", code)
    assert run.returncode == 0, run.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    if _hf_kernels_installed():
        assert out["kernels"] != "None" and not out["kernels"].startswith(os.path.join(REPO, ""))
        assert out["available"] == "True"
    else:
        assert out["kernels"] == "None" and out["available"] == "False"
    assert os.path.samefile(out["siglip_fast"], os.path.join(REPO, "kernels"))


@pytest.mark.parametrize("argv", [
    ("-m", "siglip_fast", "bench", "--tower", "text", "--backends", "eager", "--reps", "1", "--device", "cpu"),
    ("-m", "benchmarks.profile_model", "--variant", "tiny", "--batch", "1", "--impl", "transformers-sdpa",
     "--steps", "1", "--device", "cpu"),
], ids=["bench", "profile_model"])
def test_transformers_rows_are_measured_from_the_root(argv):
    """`python -m siglip_fast bench` and `python -m benchmarks.profile_model` from the root measure transformers."""
    pytest.importorskip("transformers")
    run = _run_from_root(*argv)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    if argv[1] == "siglip_fast":
        row = next(line for line in run.stdout.splitlines() if line.split()[:2] == ["text", "transformers-sdpa"])
        assert "Error" not in row and float(row.split()[-1]) <= 1e-4
    else:
        assert "transformers-sdpa: kernel time" in run.stdout


_WITHOUT_TRITON = r'''
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as on a machine without the package
import torch
import siglip_fast
from siglip_fast import SiglipVisionConfig, SiglipVisionModel
from siglip_fast.kernels.attention import attention, attention_reference

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
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "pooled (2, 32)" in lines and "reference (1, 5, 2, 16)" in lines
    assert any(line.startswith("loss ") for line in lines)
    assert "model ValueError backend='triton' needs the triton package (Linux)" in lines
    assert any(line.startswith("kernel ") and "needs the triton package" in line for line in lines), lines
