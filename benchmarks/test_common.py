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
