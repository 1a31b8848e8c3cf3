"""The corpus job under torchrun on one machine, loopback only: two agents (`--nnodes 2`, c10d rendezvous) equal
one process row for row and each rank opens only the tars it embeds; a two-rank run whose rank is SIGKILLed
part-way resumes with one process, keeps its finished units untouched and equals an uninterrupted run; under
`--max-restarts` the restarted group continues from the finished units.

The tars: SIGLIP_FAST_TEST_TARS="TARSxSAMPLES" (default 12x8, CI-sized; the issue's acceptance run is 60x40).
Which files a rank opens is recorded by a Python audit hook (sys.addaudithook, "open" events) installed by a
`sitecustomize` module on the subprocesses' path: the job's code is not touched."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import PIL.Image
import pytest

from siglip_fast import embed_corpus, load_embeddings
from tests.test_cli import checkpoint as checkpoint  # noqa: F401 (the shared tiny checkpoint fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARS, SAMPLES = (int(x) for x in os.environ.get("SIGLIP_FAST_TEST_TARS", "12x8").split("x"))
BATCH = 8
AUDIT = """
import os, sys
_log = os.environ.get("SIGLIP_FAST_TEST_OPEN_LOG")
if _log:
    def _hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith(".tar"):
            fd = os.open(os.path.join(_log, f"{os.environ.get('RANK', '0')}-{os.getpid()}"),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, (args[0] + "\\n").encode())
            os.close(fd)
    sys.addaudithook(_hook)
"""


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tars")
    rng = np.random.default_rng(0)
    for t in range(TARS):
        with tarfile.open(directory / f"data-{t:03d}.tar", "w") as tf:
            for i in range(SAMPLES):
                buffer = io.BytesIO()
                PIL.Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                info = tarfile.TarInfo(f"{t:03d}{i:03d}.jpg")
                info.size = len(buffer.getvalue())
                tf.addfile(info, io.BytesIO(buffer.getvalue()))
    return str(directory)


def _pattern(tars) -> str:
    return os.path.join(tars, f"data-{{000..{TARS - 1:03d}}}.tar")


@pytest.fixture(scope="module")
def reference(checkpoint, tars, tmp_path_factory):  # noqa: F811
    out = str(tmp_path_factory.mktemp("ref") / "out")
    embed_corpus([_pattern(tars)], out, model=checkpoint, batch_size=BATCH, workers=0, device="cpu", dtype="fp32",
                 backend="eager", progress=False)
    array, rows = load_embeddings(out)
    return np.asarray(array), [{k: v for k, v in r.items() if k != "unit"} for r in rows]


def _env(log_dir=None) -> dict:
    hook = os.path.join(log_dir or "", "hook")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    if log_dir:
        os.makedirs(hook, exist_ok=True)
        with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
            f.write(AUDIT)
        env.update(PYTHONPATH=f"{hook}{os.pathsep}{REPO}", SIGLIP_FAST_TEST_OPEN_LOG=log_dir)
    return env


def _embed_args(checkpoint, tars, out) -> list[str]:  # noqa: F811
    return ["-m", "siglip_fast", "embed", _pattern(tars), "--model", checkpoint, "--out", out, "--batch", str(BATCH),
            "--workers", "0", "--device", "cpu", "--dtype", "fp32", "--backend", "eager"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_as(reference, out):
    array, rows = load_embeddings(out)
    assert [{k: v for k, v in r.items() if k != "unit"} for r in rows] == reference[1]
    np.testing.assert_array_equal(np.asarray(array), reference[0])  # bitwise: the same batches, whoever ran them


def _records(out) -> dict[int, dict]:
    stats = os.path.join(out, "stats")
    return {int(n.split("_")[1].split(".")[0]): json.load(open(os.path.join(stats, n)))
            for n in os.listdir(stats) if ".tmp." not in n}


def test_two_torchrun_agents_equal_one_process_and_open_only_their_tars(checkpoint, tars, reference,  # noqa: F811
                                                                        tmp_path):
    out, log = str(tmp_path / "out"), str(tmp_path / "opened")
    os.makedirs(log)
    port = _free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "siglip-fast-test",
         "--local-addr", "127.0.0.1", *_embed_args(checkpoint, tars, out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(log)) for _ in range(2)]
    results = [a.communicate(timeout=600) for a in agents]
    for agent, (_, err) in zip(agents, results, strict=True):
        assert agent.returncode == 0, err[-3000:]
    err = "".join(e for _, e in results)
    assert "[rank 0/2] embedding" in err and "[rank 1/2] embedding" in err  # a tqdm bar per rank
    assert " all " in err and "input wait" in err  # the summary across ranks
    _same_as(reference, out)
    records = _records(out)
    embedded = {r: {rec["name"] for rec in records.values() if rec["rank"] == r} for r in (0, 1)}
    assert len(records) == TARS and embedded[0] and embedded[1] and not embedded[0] & embedded[1]
    opened = {0: set(), 1: set()}
    for name in os.listdir(log):
        if name != "hook":
            opened[int(name.split("-")[0])] |= set(open(os.path.join(log, name)).read().split())
    assert opened == embedded  # a rank opens exactly the tars it embeds: naming them opened none


def _kill_rank_1_part_way(out, run) -> None:
    """Once rank 1 has finished a unit (its pid is in its units' records), SIGKILL it."""
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and run.poll() is None:
        if os.path.isdir(os.path.join(out, "stats")):
            try:
                victim = {rec["rank"]: rec["pid"] for rec in _records(out).values()}.get(1)
            except (OSError, ValueError):
                pass
        time.sleep(0.005)
    assert victim is not None, "rank 1 finished no unit before the run ended"
    os.kill(victim, signal.SIGKILL)


def _npy_stamps(out, units) -> dict:
    width = len(str(TARS - 1))
    return {k: os.stat(os.path.join(out, "img_emb", f"img_emb_{k:0{width}d}.npy")).st_mtime_ns for k in units}


def test_a_rank_killed_part_way_resumes_with_one_process(checkpoint, tars, reference, tmp_path):  # noqa: F811
    """torchrun with two ranks; SIGKILL rank 1 part-way; torchrun ends the other rank. One process then finishes the
    job: the finished units are not rewritten and the result equals the uninterrupted run bit for bit."""
    out = str(tmp_path / "out")
    run = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), *_embed_args(checkpoint, tars, out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _kill_rank_1_part_way(out, run)
    _, err = run.communicate(timeout=300)
    assert run.returncode != 0, err[-3000:]
    finished = _records(out)
    assert 0 < len(finished) < TARS, "the kill came too late to leave units unfinished"
    stamps = _npy_stamps(out, finished)
    result = embed_corpus([_pattern(tars)], out, model=checkpoint, batch_size=BATCH, workers=0, device="cpu",
                          dtype="fp32", backend="eager", progress=False)
    assert result.units_reused == sorted(finished) and sorted(result.units_written) == sorted(
        set(range(TARS)) - set(finished))
    assert _npy_stamps(out, finished) == stamps
    _same_as(reference, out)


def test_an_elastic_restart_continues_from_the_finished_units(checkpoint, tars, reference, tmp_path):  # noqa: F811
    """torchrun --max-restarts 1: SIGKILL rank 1 part-way; the agent restarts the group, which verifies and keeps
    what was finished (the lock of the dead rank 0 is taken over) and embeds the rest; exit 0, the same rows."""
    out = str(tmp_path / "out")
    run = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "elastic-test",
         *_embed_args(checkpoint, tars, out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _kill_rank_1_part_way(out, run)
    before = _records(out)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert "units already finished" in err
    after = _records(out)
    assert len(after) == TARS and all(after[k]["pid"] == rec["pid"] for k, rec in before.items())
    _same_as(reference, out)
