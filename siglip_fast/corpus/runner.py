"""The job, start to end: `embed_corpus`.

1. Name the units (every rank the same list, checked); load the model.
2. Rank 0 takes the output's lock and creates or checks the manifest (a different job is refused, named).
3. The ranks verify the finished units between them (row counts, sizes, sha256); damaged ones are redone.
4. Each rank takes unfinished units one at a time (`distribute.handout`), decodes their batches in its DataLoader
   workers, runs the towers, and writes each unit when its last batch is in (`writer.write_unit`).
5. Rank 0 completes the manifest (and assembles a single `.npy` when asked for one) and prints the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from . import distribute, writer
from .decode import batches_of, decode_loader
from .job import (
    DEFAULT_SHARD_SIZE,
    DEFAULT_TEXT_CHUNK_BYTES,
    CorpusError,
    CorpusResult,
    Job,
    check_paths_exist,
    choose_device_dtype,
    default_workers,
    short_error,
)
from .listing import fingerprint_units, list_units, unit_items
from .model import Encoder, fingerprint_model, load_dual_model, naflex_patches, text_length
from .progress import bar as progress_bar
from .progress import summary_lines


def embed_corpus(inputs: Sequence[str] = (), out: str = "embeddings", *, model: str, files: Sequence[str] = (),
                 texts: Sequence[str] = (), tar: bool = False, fields: Sequence[str] | str = ("image",),
                 shard_size: int = DEFAULT_SHARD_SIZE, text_chunk_bytes: int = DEFAULT_TEXT_CHUNK_BYTES,
                 batch_size: int = 32, workers: int | None = None, device=None, dtype=None, backend: str = "auto",
                 cuda_graph: bool | None = None, max_num_patches: int | None = None, draft: bool = True,
                 progress: bool = True, stream=None) -> CorpusResult:
    """Embed a corpus; returns this process's `CorpusResult`. Call it the same way on every rank under torchrun (the
    CLI does). `inputs`: image files, folders, tars, brace patterns (`data-{000000..000099}.tar`); `files`: list
    files; `texts`: files of one text per line. `out`: a directory (the per-unit layout of `writer`), or a name
    ending in .npy (one file + .json, assembled at the end). `shard_size`: plain image files per unit;
    `text_chunk_bytes`: bytes of a texts file per unit; `workers`: decoding processes per rank (default
    `default_workers`); `draft`: reduced-size JPEG decoding for fixed-resolution models (not bit-exact; part of the
    job's identity). `cuda_graph` (default: on CUDA) runs the towers through `compile_for_inference` runners.
    `model`: any SigLIP / SigLIP 2 checkpoint; NaFlex images at `max_num_patches` (default the processor's)."""
    t_start = time.perf_counter()
    job = Job.create(inputs, out, model=model, files=files, texts=texts, tar=tar, fields=fields,
                     shard_size=shard_size, text_chunk_bytes=text_chunk_bytes, batch_size=batch_size, workers=workers,
                     device=device, dtype=dtype, backend=backend, cuda_graph=cuda_graph,
                     max_num_patches=max_num_patches, draft=draft, progress=progress)
    if job.single_file:
        parent = os.path.dirname(os.path.abspath(job.out))
        if not os.path.isdir(parent):
            raise CorpusError(f"--out: directory {parent!r} does not exist")
        if os.path.isdir(job.out):
            raise CorpusError(f"--out {job.out}: is a directory; a .npy output must be a file")
    elif os.path.isfile(job.out):
        raise CorpusError(f"--out {job.out}: is a file; give a directory for sharded output (or a .npy file name)")
    check_paths_exist(job.files, "--files")
    check_paths_exist(job.texts, "--texts")
    ctx = distribute.init(distribute.device_type_guess(job.device))
    try:
        return _run(job, ctx, stream or sys.stderr, t_start)
    finally:
        ctx.close()


def _manifest(job: Job, units, fingerprint: str, model, processor, n_patches, device, dtype) -> dict:
    identity = job.identity(device, dtype)
    ip = processor.image_processor
    identity.update(text_length=text_length(processor, model), image_size=getattr(ip, "size", None),
                    max_num_patches=n_patches)
    return {"format": writer.FORMAT, "version": writer.FORMAT_VERSION, "model": job.model,
            "model_fingerprint": fingerprint_model(job.model), "identity": identity,
            "units": {"count": len(units), "fingerprint": fingerprint, "width": len(str(max(0, len(units) - 1)))},
            "dim": model.config.text_config.projection_size, "job": job.record(), "complete": False}


def _run(job: Job, ctx: distribute.Context, stream, t_start: float) -> CorpusResult:
    device, dtype = choose_device_dtype(job.device, job.dtype, ctx.local_rank, ctx.world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    say = (lambda text: (stream.write(text + "\n"), stream.flush())) if job.progress else (lambda text: None)
    prefix = f"[rank {ctx.rank}/{ctx.world}] " if ctx.world > 1 else ""
    try:
        units = list_units(job)
        payload = fingerprint_units(units)
    except CorpusError as e:
        units, payload = [], e
    if len(set(ctx.gather(payload))) > 1:
        raise CorpusError("the ranks listed different inputs (same arguments, different files on their machines?): "
                          "every rank must see the same input listing")
    if not units:
        raise CorpusError("nothing to embed: the inputs name no units")
    t_listed = time.perf_counter()

    model, processor = load_dual_model(job.model, device, dtype, job.backend)
    n_patches = naflex_patches(model, processor, job.max_num_patches)
    manifest = _manifest(job, units, payload, model, processor, n_patches, device, dtype)
    out_dir = job.out_dir

    lock, status = None, distribute.new_token()
    if ctx.rank == 0:
        try:
            if not os.path.isdir(out_dir):
                writer.prepare(out_dir, manifest)  # a new output: created (then locked, then checked again)
            lock = writer.Lock(out_dir).acquire()
            manifest = writer.prepare(out_dir, manifest)
            if lock.note:
                say(lock.note)
        except (CorpusError, OSError) as e:
            if lock is not None:
                lock.release()
            status = e if isinstance(e, CorpusError) else CorpusError(f"--out {out_dir}: {short_error(e)}")
    try:
        token = ctx.gather(status)[0]
        return _embed(job, ctx, units, manifest, model, processor, n_patches, device, dtype, token, say, prefix,
                      t_start, t_listed, stream)
    finally:
        if lock is not None:
            lock.release()


def _verify(ctx, units, out_dir: str, width: int, dim: int, say, prefix: str) -> set[int]:
    """The finished units (their files match their records), checked by the ranks between them; a damaged one is
    removed (and so redone), with a message naming it."""
    finished = []
    present = writer.recorded_units(out_dir)  # one folder listing, not a lookup per unit
    for k in range(ctx.rank, len(units), ctx.world):
        if k not in present:
            continue
        record = writer.read_record(out_dir, k, width)
        if record is None:
            continue
        problem = writer.unit_problem(out_dir, record, width, dim)
        if problem is None:
            finished.append(k)
        else:
            say(f"{prefix}unit {k} ({units[k].name}) is damaged: {problem}; redoing it")
            writer.remove_unit(out_dir, k, width)
    return {k for part in ctx.gather(finished) for k in part}


class _Unit:
    """A unit under way: its batches so far."""

    def __init__(self, batches: int):
        self.batches, self.seen = batches, 0
        self.arrays = {"image": [], "text": []}
        self.rows = {"image": [], "text": []}
        self.skipped: list[dict] = []
        self.t0 = time.perf_counter()


def _embed(job, ctx, units, manifest, model, processor, n_patches, device, dtype, token, say, prefix, t_start,
           t_listed, stream) -> CorpusResult:
    out_dir, width, dim = job.out_dir, manifest["units"]["width"], manifest["dim"]
    done = _verify(ctx, units, out_dir, width, dim, say, prefix)
    todo = [k for k in range(len(units)) if k not in done]
    if done:
        say(f"{prefix}{len(done)} of {len(units)} units already finished in {out_dir}: skipping them")
    plans: dict[int, _Unit] = {}

    def batches():
        for k in distribute.handout(ctx, todo, token):
            unit_batches = batches_of(unit_items(units, k, job.fields), job.batch_size)
            plans[k] = _Unit(len(unit_batches))
            yield from unit_batches

    cuda = device.type == "cuda"
    image_processor = processor.image_processor
    uint8 = n_patches is None and image_processor.is_siglip_normalization()
    workers = default_workers(device) if job.workers is None else job.workers
    loader = decode_loader(batches(), image_processor, workers=workers, pin_memory=cuda, uint8=uint8,
                           max_num_patches=n_patches, draft=job.draft)
    encoder = Encoder(model, processor, device, dtype, job.batch_size, cuda if job.cuda_graph is None else
                      job.cuda_graph, n_patches)
    bar = progress_bar(ctx.rank, ctx.world, len(todo), enabled=job.progress, stream=stream)
    written, stats = [], {"rows": 0, "skipped": 0, "units": 0, "wait": 0.0}
    host = socket.gethostname()

    def finish(batch, launched):
        plan = plans[batch["unit"]]
        kind = batch["kind"]
        if launched is not None:
            values, event = launched
            if event is not None:
                event.synchronize()
            plan.arrays[kind].append(values.numpy().copy() if event is not None else values.numpy())
        if kind in plan.rows:
            plan.rows[kind] += batch["rows"]
        plan.skipped += [{**meta, "reason": reason} for meta, reason in batch["failed"]]
        plan.seen += 1
        stats["rows"] += len(batch["rows"])
        stats["skipped"] += len(batch["failed"])
        bar.update(len(batch["rows"]))
        if plan.seen == plan.batches:
            k = batch["unit"]
            arrays = {kind: np.concatenate(a) if a else np.zeros((0, dim), np.float32)
                      for kind, a in plan.arrays.items()}
            writer.write_unit(out_dir, k, width, units[k].name, arrays, plan.rows["image"] + plan.rows["text"],
                              plan.skipped, {"rank": ctx.rank, "host": host, "pid": os.getpid(),
                                             "seconds": round(time.perf_counter() - plan.t0, 3)})
            del plans[k]
            written.append(k)
            stats["units"] += 1
            bar.set_postfix(units=f"{len(written)} (job: {len(todo)} left at start)", refresh=False)

    t0 = time.perf_counter()
    status = None
    try:
        inflight = None
        it = iter(loader)
        while True:
            t_wait = time.perf_counter()
            batch = next(it, None)
            stats["wait"] += time.perf_counter() - t_wait
            if batch is None:
                break
            launched = encoder.launch(batch) if batch["rows"] else None
            if inflight is not None:
                finish(*inflight)
            inflight = (batch, launched)
        if inflight is not None:
            finish(*inflight)
        del it, loader
    except writer.OutputError as e:
        status = e
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    gathered = ctx.gather(status if status is not None else stats)

    total = {"image": 0, "text": 0}
    skipped = 0
    if ctx.rank == 0:
        try:
            records = [writer.read_record(out_dir, k, width) for k in range(len(units))]
            missing = [k for k, r in enumerate(records) if r is None or "damaged" in r]
            if missing:
                raise CorpusError(f"units {missing[:10]} are not finished after every rank stopped")
            manifest = writer.finalize(out_dir, manifest, width, records)
            total, skipped = manifest["rows"], manifest["skipped"]
            if job.single_file:
                if total["image"] + total["text"]:
                    _assemble(out_dir, manifest, job.out)
            _report(job, manifest, records, gathered, say, t_start, t_listed)
            if job.single_file:
                shutil.rmtree(out_dir, ignore_errors=True)
            status = (total, skipped)
        except (CorpusError, OSError) as e:
            status = e if isinstance(e, CorpusError) else CorpusError(f"--out {job.out}: {short_error(e)}")
    total, skipped = ctx.gather(status)[0]
    return CorpusResult(out=job.out, rows=total["image"] + total["text"], skipped=skipped, units=len(units),
                        units_written=written, units_reused=sorted(done), seconds=time.perf_counter() - t_start,
                        rank=ctx.rank, world_size=ctx.world, input_wait_s=stats["wait"], rows_written=stats["rows"],
                        loop_seconds=stats["seconds"], summary=gathered)


def _report(job, manifest, records, gathered, say, t_start, t_listed) -> None:
    rows, skipped = manifest["rows"], manifest["skipped"]
    n = rows["image"] + rows["text"]
    where = job.out if job.single_file and n else job.out_dir
    if n:
        kinds = " + ".join(f"{v:,} {k}" for k, v in rows.items() if v)
        say(f"wrote {n:,} embeddings ({kinds}) of dim {manifest['dim']} to {where}"
            + (f" (rows listed in {job.out[:-4]}.json)" if job.single_file else
               f" ({manifest['units']['count']} unit(s), {writer.MANIFEST})"))
    if skipped:
        say(f"skipped {skipped} unreadable or unusable input(s):")
        shown = [s for r in records for s in r["skipped"][:20]][:20]
        for s in shown:
            name = s["source"] + (f" [{s['member']}]" if "member" in s else f" [{s['key']}]" if "key" in s else "")
            say(f"  {name}: {s['reason']}")
        if skipped > len(shown):
            say(f"  ... {skipped - len(shown)} more")
        if not job.single_file:
            say(f"  (all listed in {os.path.join(job.out_dir, writer.SKIPPED)})")
    say(f"listing: {t_listed - t_start:.2f} s; this call: {time.perf_counter() - t_start:.1f} s")
    for line in summary_lines(gathered):
        say(line)


def _assemble(out_dir: str, manifest: dict, out: str) -> None:
    """The units -> one .npy (image rows, then text rows) and its .json listing, streamed (never the whole matrix in
    memory), each written to a temporary name and renamed into place."""
    from .reader import load_embeddings

    array, rows = load_embeddings(out_dir)
    listing = out[: -len(".npy")] + ".json"
    tmp_npy, tmp_json = f"{out}.tmp.{os.getpid()}", f"{listing}.tmp.{os.getpid()}"
    try:
        target = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float32, shape=array.shape)
        start = 0
        for part in array.parts():
            target[start:start + len(part)] = part
            start += len(part)
        target.flush()
        del target
        with open(tmp_json, "w", encoding="utf-8") as f:
            f.write("{" + f'"model": {json.dumps(manifest["model"])}, "shape": [{array.shape[0]}, {array.shape[1]}],'
                    ' "rows": [')
            for i in range(len(rows)):
                row = {k: v for k, v in rows[i].items() if k != "unit"}
                f.write(("" if i == 0 else ",") + "\n " + json.dumps(row, ensure_ascii=True))
            skipped = os.path.join(out_dir, writer.SKIPPED)
            with open(skipped, encoding="utf-8") as g:
                entries = [json.loads(line) for line in g]
            f.write('\n], "skipped": ' + json.dumps([{k: v for k, v in e.items() if k != "unit"} for e in entries],
                                                   ensure_ascii=True) + "}\n")
        os.replace(tmp_npy, out)
        os.replace(tmp_json, listing)
    except OSError as e:
        raise writer.OutputError(f"cannot write {out}: {e.strerror or short_error(e)}") from None
    finally:
        for t in (tmp_npy, tmp_json):
            if os.path.exists(t):
                os.remove(t)
