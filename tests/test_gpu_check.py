"""benchmarks/gpu_check.sh, the one GPU run: where no GPU is visible it stops at once, non-zero, with the reason.
(Its dry run, `bash benchmarks/gpu_check.sh --dry-run`, collecting every pytest selection it uses, is a CI step of
.ci/run.)"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the script needs bash and coreutils' timeout")


def _run(*args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # tests/conftest.py sets it on CPU
    env.update(env_extra or {})
    # `python` in the script must be this interpreter (and see this checkout)
    bindir = pathlib.Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)
    return proc, time.monotonic() - t0


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_without_a_gpu_it_fails_at_once_with_the_reason(tmp_path):
    """No GPU visible (CUDA_VISIBLE_DEVICES empty hides one on a GPU machine too): exit 2 within seconds, before any
    install or test, saying why."""
    if shutil.which("python") is None and not (pathlib.Path(sys.executable).parent / "python").exists():
        pytest.skip("the script calls `python`")
    proc, seconds = _run(env_extra={"CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU is visible" in proc.stderr
    assert seconds < 30
    assert not (tmp_path / "install.log").exists() and not list(tmp_path.glob("tests-*.log"))


def test_the_interpreter_is_refused(tmp_path):
    proc, _ = _run(env_extra={"TRITON_INTERPRET": "1", "OUT": str(tmp_path)})
    assert proc.returncode == 2 and "TRITON_INTERPRET=1" in proc.stderr


def test_unknown_arguments_are_refused(tmp_path):
    proc, _ = _run("--fast", env_extra={"OUT": str(tmp_path)})
    assert proc.returncode == 2 and "usage" in proc.stderr
