"""The command line: `python -m siglip_fast bench|embed|classify` (also installed as `siglip-fast`).

- `bench`: random weights of a named shape (or a checkpoint), every backend side by side with transformers, the
  fused path checked against the eager reference first.
- `embed`: L2-normalised image and/or text embeddings of many inputs, saved with `np.save` plus a JSON listing of
  the rows; images are decoded in worker threads while the model runs, unreadable files are skipped and reported.
- `classify`: SigLIP zero-shot classification of one image (independent sigmoid probabilities per label).

Usage errors (bad paths, unknown model names, bad dtype or device) exit with status 2 and a one-line message on
stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from .variants import VARIANTS, canonical_name, config_for, is_variant, matmul_flops

PROG = "siglip-fast"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_TEMPLATE = "This is a photo of {}."
CPU_BENCH_LAYERS = 1


class CLIError(Exception):
    """A usage error: reported on stderr as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers (also used by benchmarks/test_bench_model.py)
# ---------------------------------------------------------------------------------------------------------------


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device: {name!r} is not a device (expected e.g. 'cpu', 'cuda' or 'cuda:1')") from None
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: {name!r} is not supported (expected 'cpu' or 'cuda[:N]')")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise CLIError(f"--dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def random_model(config, device: torch.device, dtype: torch.dtype, backend: str = "eager"):
    """A SiglipModel with transformers' random initialisation, built directly on `device` in `dtype`."""
    from .modeling import SiglipModel

    with torch.device(device):
        model = SiglipModel(config, backend=backend)
    return model.to(dtype).eval()


def transformers_twin(model, attn_implementation: str = "sdpa"):
    """The same weights in transformers' SiglipModel (state_dict keys are identical); None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    config = model.config
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the CLIP-era bos/eos ids outside small vocabularies warn
    try:
        hf_config = transformers.SiglipConfig(text_config=config.text_config.to_dict(),
                                              vision_config=config.vision_config.to_dict())
        hf_config._attn_implementation = attn_implementation
        with torch.device(model.device):
            hf = transformers.SiglipModel(hf_config)
    finally:
        transformers.logging.set_verbosity(verbosity)
    hf = hf.to(model.dtype).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def pooled(output) -> torch.Tensor:
    """`.pooler_output` of a tower output (transformers v5, siglip_fast) or the tensor itself (transformers v4)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def time_ms(fn: Callable[[], object], device: torch.device, *, reps: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of fn(): CUDA events via triton.testing.do_bench on a GPU, wall clock on CPU."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _check_backend(backend: str, device: torch.device) -> None:
    """Fail before loading anything when the backend cannot run on the device (triton on CPU, no interpreter)."""
    from . import ops

    try:
        ops.resolve(backend, torch.empty(0, device=device))
    except ValueError as e:
        raise CLIError(f"--backend {backend}: {e}") from None


def _load_model(path: str, device: torch.device, dtype: torch.dtype, backend: str):
    from .modeling import SiglipModel

    _check_backend(backend, device)
    try:
        return SiglipModel.from_pretrained(path, dtype=dtype, device=device, backend=backend)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CLIError(f"--model {path}: {e}") from None


def _load_processor(path: str):
    from .processing import SiglipProcessor

    try:
        return SiglipProcessor.from_pretrained(path)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CLIError(f"--model {path}: no usable processor files (spiece.model, tokenizer_config.json, "
                       f"processor_config.json or preprocessor_config.json): {e}") from None


def _text_length(processor, model) -> int:
    return min(processor.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)


def _tokenize(processor, model, texts: list[str], device: torch.device) -> dict:
    """SigLIP's training setting: padded to max_length, truncated; the mask only if the tokenizer lists it."""
    enc = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=_text_length(processor, model),
                              return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


class _Progress:
    """tqdm when installed, else a plain one-line counter on stderr."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True)
        self._draw()

    def update(self, n: int) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._draw()

    def _draw(self) -> None:
        if self._bar is None:
            pct = 100.0 * self.n / self.total if self.total else 100.0
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%)")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------------------------


def _bench_setup(args, device: torch.device, dtype: torch.dtype):
    """(model, shape description, batch): the default shape, a named shape (random weights) or a checkpoint."""
    default_batch = 32 if device.type == "cuda" else 2
    if args.model is None:
        if device.type == "cuda":
            name = "so400m-patch14-384"
            return random_model(config_for(name), device, dtype), f"{name} (random weights)", args.batch or 32
        config = config_for("base-patch16-224")
        config.text_config.num_hidden_layers = CPU_BENCH_LAYERS
        config.vision_config.num_hidden_layers = CPU_BENCH_LAYERS
        desc = f"base-patch16-224 widths, {CPU_BENCH_LAYERS} layer per tower (CPU default; random weights)"
        return random_model(config, device, dtype), desc, args.batch or 2
    if os.path.isdir(args.model):
        return _load_model(args.model, device, dtype, "eager"), args.model, args.batch or default_batch
    if not is_variant(args.model):
        raise CLIError(f"--model: {args.model!r} is neither a checkpoint directory nor a known shape; known shapes: "
                       f"{', '.join(VARIANTS)}")
    name = canonical_name(args.model)
    return random_model(config_for(name), device, dtype), f"{name} (random weights)", args.batch or default_batch


def _short_error(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {line}"
    return text if len(text) <= 100 else text[:97] + "..."


def _format_rows(rows: list[dict], columns: list[str]) -> list[str]:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            if v == 0:
                return "0"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), "  ".join("-" * w for w in widths)]
    for r, row in zip(rows, cells, strict=True):
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        lines.append(line + (f"  {r['error']}" if r.get("error") else ""))
    return lines


BENCH_IMPLS = ("triton", "triton-graph", "sdpa", "eager")


def graphed_forward(model, tower: str, pixels: torch.Tensor | None, ids: torch.Tensor | None) -> Callable[[], object]:
    """One tower ("vision": pixels, "text": ids) of a SiglipModel on the triton backend, captured in a CUDA graph at
    this batch size (compile_for_inference); the benchmarks build their graph rows with it too."""
    model.set_backend("triton")
    if tower == "vision":
        runner = model.vision_model.compile_for_inference(len(pixels), pixel_dtype=pixels.dtype)
        return lambda: runner(pixel_values=pixels)
    runner = model.text_model.compile_for_inference(len(ids), seq_len=ids.shape[1])
    return lambda: runner(input_ids=ids)


def cmd_bench(args) -> int:
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if args.batch is not None and args.batch < 1:
        raise CLIError(f"--batch must be >= 1, got {args.batch}")
    if args.reps < 1:
        raise CLIError(f"--reps must be >= 1, got {args.reps}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BENCH_IMPLS:
            raise CLIError(f"--backends: expected a comma-separated subset of {','.join(BENCH_IMPLS)}, got {b!r}")
    model, desc, batch = _bench_setup(args, device, dtype)
    config = model.config
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    print(f"siglip_fast bench: {desc}")
    print(f"  device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"dtype {str(dtype).removeprefix('torch.')}, batch {batch}, torch {torch.__version__}")
    if "triton" in backends and device.type == "cpu" and not interpreted:
        print("  note: the Triton kernels need a GPU for speed; on CPU they run only under the Triton interpreter "
              "(set TRITON_INTERPRET=1 before starting). Comparing sdpa vs eager.")
        backends = [b for b in backends if b != "triton"]
    elif "triton" in backends and interpreted:
        print("  note: Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1): checked for correctness, "
              "timed once; interpreter times say nothing about GPU speed.")
    if "triton-graph" in backends and device.type != "cuda":
        print("  note: triton-graph (the CUDA-graph runner, compile_for_inference) needs a GPU: no such row.")
        backends = [b for b in backends if b != "triton-graph"]
    impls = ["eager"] + [b for b in backends if b != "eager"]  # eager first: the reference and the baseline

    hf, hf_error = None, None
    try:
        hf = transformers_twin(model, "sdpa")
    except Exception as e:  # a transformers version that cannot build this config: report, keep going
        hf_error = _short_error(e)
    if hf is not None or hf_error:
        impls.append("transformers-sdpa")
    else:
        print("  note: transformers is not installed: no transformers row.")

    vc, tc = config.vision_config, config.text_config
    gen = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=gen).to(device, dtype)
    ids = torch.randint(0, tc.vocab_size, (batch, tc.max_position_embeddings), generator=gen).to(device)
    towers = {
        "vision": (lambda m: m.vision_model(pixel_values=pixels), "img/s",
                   matmul_flops(config, images=batch)),
        "text": (lambda m: m.text_model(input_ids=ids), "texts/s", matmul_flops(config, texts=batch)),
    }
    selected = ["vision", "text"] if args.tower == "both" else [args.tower]

    rows = []
    with torch.inference_mode():
        for tower in selected:
            forward, unit, flops = towers[tower]
            reference, eager_ms = None, None
            for impl in impls:
                row = {"tower": tower, "impl": impl + (" (interpreted)" if impl == "triton" and interpreted else "")}
                rows.append(row)
                if impl == "transformers-sdpa" and hf is None:
                    row["error"] = hf_error
                    continue
                try:
                    if impl == "triton-graph":
                        fn = graphed_forward(model, tower, pixels, ids)
                    else:
                        target = hf if impl == "transformers-sdpa" else model.set_backend(impl)
                        fn = lambda: forward(target)  # noqa: B023 (called within this iteration only)
                    out = pooled(fn()).float()
                    reference = out if impl == "eager" else reference
                    row["max_diff"] = None if reference is None else (out - reference).abs().max().item()
                    slow = impl == "triton" and interpreted  # the call above was the warm-up
                    ms = time_ms(fn, device, reps=1 if slow else args.reps, warmup=0)
                    eager_ms = ms if impl == "eager" else eager_ms
                    row.update({"ms": ms, unit: batch * 1e3 / ms, "TFLOP/s": flops / ms / 1e9,
                                "vs_eager": (eager_ms / ms) if eager_ms else None,
                                "peak_MiB": peak_mib(fn, device)})
                except Exception as e:  # a kernel failure is one row's error, not the end of the run
                    row["error"] = _short_error(e)
    columns = ["tower", "impl", "ms", "img/s", "texts/s", "TFLOP/s", "vs_eager", "peak_MiB", "max_diff"]
    columns = [c for c in columns if any(c in r for r in rows) or c in ("tower", "impl", "ms")]
    print()
    for line in _format_rows(rows, columns):
        print(line)
    print("\nmax_diff: max |pooled output - eager backend's| on the same weights and inputs; vs_eager: eager ms / ms.")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------------------------


def collect_images(inputs: Sequence[str]) -> list[str]:
    """Files as given (any extension), directories walked (sorted) for image extensions; a missing path is an
    error before anything runs."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise CLIError(f"{item!r}: no such file or directory")
    return paths


def _read_texts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise CLIError(f"--texts: {path!r}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--texts {path}: cannot read it as UTF-8 text: {e}") from None
    return [line for line in lines if line.strip()]


def _decode(path: str, image_processor, uint8: bool):
    """One image file -> its (3, H, W) model input (uint8 pixels when the model normalises them itself)."""
    from .image_processing import load_image

    image = load_image(path)
    return image_processor([image], return_uint8=uint8, num_workers=1)["pixel_values"][0]


def _embed_images(model, processor, paths, args, device, dtype, skipped: list) -> tuple[list, list]:
    """Decode in worker threads (a window of 2 batches ahead) while the model runs on the current batch."""
    import numpy as np

    image_processor = processor.image_processor
    uint8 = image_processor.is_siglip_normalization()
    embeddings, done = [], []
    progress = _Progress(len(paths), "embedding images", "img")
    batch_px, batch_paths = [], []

    def run_batch():
        x = torch.from_numpy(np.stack(batch_px)).to(device)
        x = x if x.dtype == torch.uint8 else x.to(dtype)
        with torch.inference_mode():
            features = pooled(model.get_image_features(pixel_values=x)).float()
        embeddings.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        done.extend(batch_paths)
        progress.update(len(batch_paths))
        batch_px.clear()
        batch_paths.clear()

    workers = args.workers or min(8, os.cpu_count() or 1)
    pending: deque = deque()
    remaining = iter(paths)
    with ThreadPoolExecutor(workers) as pool:
        def fill():
            while len(pending) < 2 * args.batch:
                path = next(remaining, None)
                if path is None:
                    return
                pending.append((path, pool.submit(_decode, path, image_processor, uint8)))

        fill()
        while pending:
            path, future = pending.popleft()
            fill()
            try:
                pixels = future.result()
            except Exception as e:  # unreadable, truncated, not an image: skip it, report it at the end
                skipped.append({"path": path, "error": _short_error(e)})
                progress.update(1)
                continue
            batch_px.append(pixels)
            batch_paths.append(path)
            if len(batch_px) == args.batch:
                run_batch()
        if batch_px:
            run_batch()
    progress.close()
    return embeddings, done


def _embed_texts(model, processor, texts, args, device) -> list:
    embeddings = []
    progress = _Progress(len(texts), "embedding texts", "text")
    for start in range(0, len(texts), args.batch):
        chunk = texts[start:start + args.batch]
        enc = _tokenize(processor, model, chunk, device)
        with torch.inference_mode():
            features = pooled(model.get_text_features(**enc)).float()
        embeddings.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        progress.update(len(chunk))
    progress.close()
    return embeddings


def cmd_embed(args) -> int:
    import numpy as np

    if args.batch < 1:
        raise CLIError(f"--batch must be >= 1, got {args.batch}")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    paths = collect_images(args.inputs)
    texts = _read_texts(args.texts) if args.texts else []
    if not paths and not texts:
        raise CLIError("nothing to embed: give image files or directories (with image files in them) and/or --texts")
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise CLIError(f"--out: directory {out_dir!r} does not exist")
    model = _load_model(args.model, device, dtype, args.backend)
    processor = _load_processor(args.model)

    skipped: list[dict] = []
    parts, rows = [], []
    if paths:
        embeddings, done = _embed_images(model, processor, paths, args, device, dtype, skipped)
        parts += embeddings
        rows += [{"type": "image", "source": p} for p in done]
    if texts:
        parts += _embed_texts(model, processor, texts, args, device)
        rows += [{"type": "text", "source": t} for t in texts]
    dim = model.config.text_config.projection_size
    matrix = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
    np.save(out, matrix)
    listing = out[: -len(".npy")] + ".json"
    with open(listing, "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "shape": list(matrix.shape), "rows": rows, "skipped": skipped}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    print(f"wrote {matrix.shape[0]} embeddings of dim {matrix.shape[1]} to {out} (rows listed in {listing})")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s['path']}: {s['error']}", file=sys.stderr)
    if not rows:
        print("error: no input could be embedded", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------------------------


def zero_shot(model, processor, image, labels: list[str], template: str, device, dtype) -> list[tuple[str, float]]:
    """SigLIP zero-shot: sigmoid(logits_per_image) for each templated label, sorted by probability."""
    texts = [template.format(label) for label in labels]
    enc = _tokenize(processor, model, texts, device)
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"].to(device, dtype)
    with torch.inference_mode():
        logits = model(pixel_values=pixels, **enc).logits_per_image[0].float()  # (num_labels,)
    probs = torch.sigmoid(logits).tolist()
    return sorted(zip(labels, probs, strict=True), key=lambda lp: -lp[1])


def cmd_classify(args) -> int:
    from .image_processing import load_image

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if not os.path.isfile(args.image):
        raise CLIError(f"{args.image!r}: no such file")
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise CLIError(f"--labels: expected comma-separated labels, got {args.labels!r}")
    if "{}" not in args.template:
        raise CLIError(f"--template must contain '{{}}' where the label goes, got {args.template!r}")
    try:
        image = load_image(args.image)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    model = _load_model(args.model, device, dtype, args.backend)
    processor = _load_processor(args.model)
    width = max(len(label) for label in labels)
    for label, prob in zero_shot(model, processor, image, labels, args.template, device, dtype):
        print(f"{label.ljust(width)}  {prob:.6f}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="siglip_fast: benchmark, embed and classify with SigLIP.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bench,embed,classify}")

    def common(p, *, backend: bool = True):
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
        p.add_argument("--dtype", choices=list(DTYPES), default=None,
                       help="weights and activations dtype (default: bf16 on CUDA, fp32 on CPU)")
        if backend:
            p.add_argument("--backend", choices=["auto", "triton", "eager", "sdpa"], default="auto",
                           help="siglip_fast backend (default auto: Triton kernels on CUDA, eager on CPU)")

    bench = sub.add_parser("bench", help="time every backend side by side (random weights)",
                           description="Time siglip_fast's backends side by side (and transformers when installed) "
                                       "after checking them against the eager reference. Default shape: "
                                       "so400m-patch14-384 on CUDA, batch 32; on CPU base-patch16-224 widths with "
                                       f"{CPU_BENCH_LAYERS} layer per tower, batch 2.")
    bench.add_argument("--model", default=None,
                       help=f"a named shape ({', '.join(VARIANTS)}; also with the google/siglip- prefix) or a "
                            "checkpoint directory")
    bench.add_argument("--batch", type=int, default=None, help="images (and texts) per call")
    bench.add_argument("--tower", choices=["vision", "text", "both"], default="both")
    bench.add_argument("--backends", default="triton,triton-graph,sdpa,eager",
                       help="comma-separated, default triton,triton-graph,sdpa,eager (triton-graph: the triton backend "
                            "replayed from a CUDA graph, GPU only)")
    bench.add_argument("--reps", type=int, default=3, help="timed repetitions on CPU (GPU: do_bench's median)")
    common(bench, backend=False)
    bench.set_defaults(func=cmd_bench)

    embed = sub.add_parser("embed", help="L2-normalised embeddings of images and/or texts",
                           description="Embed images (files, or directories walked for image files) and/or texts "
                                       "(--texts: one per line, blank lines ignored). Writes OUT (.npy, float32, "
                                       "L2-normalised rows: images first, then texts) and OUT with .json listing "
                                       "each row's source and the skipped files.")
    embed.add_argument("inputs", nargs="*", metavar="IMAGES_OR_DIR", help="image files or directories")
    embed.add_argument("--model", required=True, help="checkpoint directory (or hub id) with the processor files")
    embed.add_argument("--out", required=True, help="output .npy file")
    embed.add_argument("--texts", default=None, help="a UTF-8 file with one text per line")
    embed.add_argument("--batch", type=int, default=32)
    embed.add_argument("--workers", type=int, default=None, help="image decoding threads (default min(8, cores))")
    common(embed)
    embed.set_defaults(func=cmd_embed)

    classify = sub.add_parser("classify", help="zero-shot probabilities of one image over labels",
                              description="SigLIP zero-shot classification: one independent sigmoid probability "
                                          "per label, printed from most to least likely.")
    classify.add_argument("image", metavar="IMAGE")
    classify.add_argument("--model", required=True, help="checkpoint directory (or hub id) with the processor files")
    classify.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')
    classify.add_argument("--template", default=DEFAULT_TEMPLATE, help=f'default "{DEFAULT_TEMPLATE}"')
    common(classify)
    classify.set_defaults(func=cmd_classify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed by argparse)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except CLIError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
