"""The reporting helpers the GPU run relies on: rows streamed to JSON lines as measured, and the table format."""

import json

from benchmarks import _common


def test_report_streams_rows_to_json_lines(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    monkeypatch.setenv("SIGLIP_FAST_BENCH_ROWS", str(path))
    monkeypatch.setattr(_common, "ROWS", [])
    _common.report("suite a", "case 1", "triton", ms=1.5, ratio=2.0)
    _common.report("suite a", "case 1", "eager", ms=3.0, error=None)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == _common.ROWS and [r["impl"] for r in rows] == ["triton", "eager"]
    table = _common.format_table(rows)
    assert table[0].split() == ["suite", "case", "impl", "ms", "ratio", "error"]
    assert "1.5" in table[2] and "3" in table[3]


def test_roofline_columns(monkeypatch):
    """flops/bytes become the roofline columns: with measured ceilings (stand-ins here: 500 TFLOP/s and 2 TB/s), the
    predicted time is the larger of compute and traffic time, and the efficiency is that over the measured time."""
    monkeypatch.setattr(_common, "ROWS", [])
    monkeypatch.setattr(_common, "gemm_peak_tflops", lambda device: 500.0)
    monkeypatch.setattr(_common, "copy_peak_tbps", lambda device: 2.0)
    compute = _common.report("s", "c", "gemm", ms=4.0, flops=1e12, bytes=1e9)  # 2 ms of FLOPs, 0.5 ms of bytes
    assert compute["gflop"] == 1e3 and compute["mbytes"] == 1e3
    assert compute["bound"] == "compute" and abs(compute["roof_ms"] - 2.0) < 1e-12
    assert abs(compute["roof_eff"] - 0.5) < 1e-12
    memory = _common.report("s", "c", "copy", ms=1.0, flops=0.0, bytes=1e9)
    assert memory["bound"] == "memory" and abs(memory["roof_ms"] - 0.5) < 1e-12 and "flops" not in memory


def test_roofline_without_ceilings(monkeypatch):
    monkeypatch.setattr(_common, "gemm_peak_tflops", lambda device: None)
    monkeypatch.setattr(_common, "copy_peak_tbps", lambda device: None)
    assert _common.roofline(2e9, 3e6, 1.0) == {"gflop": 2.0, "mbytes": 3.0}


def test_rel_err_is_relative_to_each_tensors_scale():
    import math

    import torch

    ref = torch.tensor([1e-3, -2e-3, 0.5e-3])
    assert abs(_common.rel_err(ref * 1.01, ref) - 0.01) < 1e-6  # a 1 % error reads 1e-2 at any scale
    assert abs(_common.rel_err(ref * 1e3 * 1.01, ref * 1e3) - 0.01) < 1e-6
    assert _common.rel_err(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) == math.inf
    assert _common.rel_err(torch.ones(3), torch.ones(4)) == math.inf


def test_check_close_fails_over_budget_naming_the_tensor():
    import pytest
    import torch

    a = torch.randn(10)
    assert _common.check_close("row", [a, a * 2], [a, a * 2], 1e-12) == 0.0
    with pytest.raises(AssertionError, match=r"row: error .* over the budget 1e-04 .*dw 1\.00e-02"):
        _common.check_close("row", [a, a * 1.01], [a, a], 1e-4, ["dx", "dw"])


def test_run_rows_fails_rows_that_raise_or_are_over_budget(monkeypatch):
    """No row's exception is dropped: a row that raises and a row over budget are failures; the good row is timed."""
    import torch

    monkeypatch.setattr(_common, "time_ms", lambda fn, device: 1.0)
    ref = torch.ones(4, dtype=torch.float64)

    def broken():
        raise RuntimeError("kernel crashed")

    impls = {"good": lambda: (lambda: torch.ones(4)), "off": lambda: (lambda: torch.ones(4) * 1.01),
             "crash": broken, "untimed": lambda: (lambda: torch.ones(4))}
    results, failures, main = _common.run_rows(impls, lambda out: [out], [ref], lambda errs: 1e-4,
                                               torch.device("cpu"), untimed=["untimed"])
    assert set(failures) == {"off", "crash"} and "kernel crashed" in failures["crash"]
    assert "over the budget" in failures["off"]
    assert results["good"]["ms"] == 1.0 and "ms" not in results["untimed"] and main[0] == "good"


def test_model_budget():
    import torch

    assert _common.model_budget(torch.float32, {"eager": 0.5}) == 1e-4
    assert _common.model_budget(torch.bfloat16, {"eager": 0.04}) == 0.08
    assert _common.model_budget(torch.bfloat16, {"eager": 1e-3}) == _common.REL_BUDGET[torch.bfloat16]
