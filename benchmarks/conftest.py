"""pytest-benchmark set-up: options, the shared timing helpers, and the summary table printed at the end.

Every figure a benchmark reports goes through `report(...)`; at the end of the session the rows are printed as one
side-by-side table and written to a JSON file (machine, card, versions, date) given by --bench-json.
"""

from __future__ import annotations

import datetime
import json
import os
import platform

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks import _common  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("siglip_fast")
    group.addoption("--bench-size", choices=("small", "full"), default=None,
                    help="problem sizes: 'full' = the real checkpoint shapes (GPU default), "
                         "'small' = quick (CPU default)")
    group.addoption("--compile-baselines", action="store_true", default=False,
                    help="also time torch.compile of the baselines (slow to compile)")
    group.addoption("--bench-json", default="bench-results.json", help="where to write every reported figure")
    group.addoption("--bench-warm", action="store_true", default=False,
                    help="run each row's first call and its correctness check, time nothing: fills triton's and "
                         "torch.compile's on-disk caches (gpu_check.sh's warm stage; use with --benchmark-disable)")


def pytest_configure(config):
    _common.WARM["on"] = bool(config.getoption("--bench-warm"))


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    size = request.config.getoption("--bench-size")
    if size is None:
        size = "full" if torch.cuda.is_available() else "small"
    return size


@pytest.fixture(scope="session")
def compile_baselines(request) -> bool:
    return request.config.getoption("--compile-baselines")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def report():
    """report(suite, case, impl, **figures): one row of the summary table."""
    return _common.report


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = _common.ROWS
    if not rows:
        return
    terminalreporter.write_sep("=", "siglip_fast benchmark summary")
    if _common.GEMM_PEAK:
        terminalreporter.write_line(f"ceilings measured in this run: bf16 GEMM 8192^3 "
                                    f"{_common.GEMM_PEAK.get('tflops', 0):.0f} TFLOP/s, device copy "
                                    f"{_common.GEMM_PEAK.get('tbps', 0):.2f} TB/s (roof_ms = max(FLOPs / GEMM rate, "
                                    "ideal bytes / copy rate); roof_eff = roof_ms / ms)")
    for line in _common.format_table(rows):
        terminalreporter.write_line(line)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "triton": _common.triton_version(),
        "gemm_peak_tflops": _common.GEMM_PEAK.get("tflops"),
        "copy_peak_tbps": _common.GEMM_PEAK.get("tbps"),
    }
    path = config.getoption("--bench-json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    terminalreporter.write_line(f"figures written to {path}")
