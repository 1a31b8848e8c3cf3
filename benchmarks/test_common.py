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
