"""The corpus job's start-up cost per rank against the number of input shards (siglip_fast.corpus).

What one rank does before its first unit: name the units (a folder listing or a brace pattern), fingerprint the
listing, create the output and its manifest, look for finished units, take its first unit and read that tar's
headers. Measured in a fresh process per case (time, and peak RSS over a process that only imported the job), for
1,000 and 10,000 small synthetic tars (`--bench-size full` adds 100,000) of 1 and of 50 samples each: the cost grows
with the shards (a few hundred bytes and microseconds each) and not with the samples, which no rank reads before it
embeds them. The model is not loaded (its cost does not depend on the corpus).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

SUITE = "job start-up"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = r"""
import json, os, resource, sys, time
from siglip_fast.corpus import Job, list_units, unit_items
from siglip_fast.corpus.listing import fingerprint_units
from siglip_fast.corpus import writer
from siglip_fast.corpus.distribute import Context, handout
from siglip_fast.corpus.runner import _verify
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inputs, out, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if mode != "baseline":
    job = Job.create(inputs, out, model="unused", progress=False)
    units = list_units(job)
    manifest = {"format": writer.FORMAT, "version": writer.FORMAT_VERSION, "model": "unused",
                "model_fingerprint": "", "identity": {}, "dim": 0, "job": job.record(), "complete": False,
                "units": {"count": len(units), "fingerprint": fingerprint_units(units),
                          "width": len(str(len(units) - 1))}}
    writer.prepare(out, manifest)
    done = _verify(Context(), units, out, manifest["units"]["width"], 0, print, "")
    todo = [k for k in range(len(units)) if k not in done]
    first = next(handout(Context(), todo, ""))
    items = unit_items(units, first, job.fields)
    assert items and items[0].kind == "image", items[:1]
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "import_kb": base}))
"""


def _tar_bytes(samples: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for i in range(samples):
            info = tarfile.TarInfo(f"{i:06d}.jpg")
            info.size = 16
            tf.addfile(info, io.BytesIO(bytes(16)))
    return buffer.getvalue()


def _measure(inputs: list[str], out: str, mode: str = "job") -> dict:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(inputs), out, mode], capture_output=True,
                         text=True, timeout=1200, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict:
    return {}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """A process that imports the job and does nothing: what every case's peak RSS is measured over."""
    return _measure([], str(tmp_path_factory.mktemp("unused") / "o"), "baseline")


def _shard_counts(size: str) -> list[int]:
    return [1000, 10_000] + ([100_000] if size == "full" else [])


@pytest.mark.parametrize("naming", ["brace", "folder"])
@pytest.mark.parametrize("samples", [1, 50])
@pytest.mark.parametrize("shards", [1000, 10_000, 100_000])
def test_bench_job_startup(benchmark, report, bench_size, tmp_path_factory, results, baseline, shards, samples,
                           naming):
    if shards not in _shard_counts(bench_size):
        pytest.skip("100,000 shards with --bench-size full")
    directory = tmp_path_factory.mktemp(f"tars-{shards}-{samples}")
    data = _tar_bytes(samples)
    for t in range(shards):
        with open(directory / f"data-{t:06d}.tar", "wb") as f:
            f.write(data)
    inputs = [str(directory / f"data-{{000000..{shards - 1:06d}}}.tar")] if naming == "brace" else [str(directory)]
    m = benchmark.pedantic(lambda: _measure(inputs, str(tmp_path_factory.mktemp("out") / "o")), rounds=1,
                           iterations=1)
    extra_mb = max(0, m["peak_kb"] - baseline["peak_kb"]) / 1024
    results[(naming, shards, samples)] = (m["seconds"], extra_mb)
    report(SUITE, f"{shards:,} tars x {samples} samples, named by {naming}", "one rank to its first unit",
           ms=m["seconds"] * 1e3, us_per_shard=m["seconds"] / shards * 1e6, peak_rss_mb=m["peak_kb"] / 1024,
           rss_over_imports_mb=extra_mb, bytes_per_shard=extra_mb * 2**20 / shards)
    # flat in the samples: 50x the samples per tar changes neither the time nor the memory beyond noise
    other = results.get((naming, shards, 1 if samples == 50 else 50))
    if other is not None:
        (t_a, mb_a), (t_b, mb_b) = sorted([other, (m["seconds"], extra_mb)])
        assert t_b < 2.0 * t_a + 0.5, (other, m)
        assert abs(mb_b - mb_a) < 0.5 * max(mb_a, mb_b) + 8, (other, m)
    assert extra_mb * 2**20 / shards < 4096  # O(shards), a few hundred bytes each
