"""The command line: `python -m siglip_fast bench|embed|classify` (also installed as `siglip-fast`).

- `bench`: random weights of a named shape (or a checkpoint), every backend side by side with transformers, the
  fused path checked against the eager reference first.
- `embed`: L2-normalised image and/or text embeddings of a corpus: an argument layer over
  `siglip_fast.corpus.embed_corpus` (per input shard, resumable; torchrun ranks; decoding in worker processes).
- `classify`: SigLIP zero-shot classification of one image (independent sigmoid probabilities per label).

Every command takes SigLIP and SigLIP 2 checkpoints (`load_model` / `load_processor` dispatch on the directory): for
NaFlex SigLIP 2 (`Siglip2Model`) images go through `Siglip2ImageProcessor` at `--max-num-patches` and the model
gets `pixel_values`, `pixel_attention_mask` and `spatial_shapes`.

Usage errors (bad paths, unknown model names, bad dtype or device) exit with status 2 and a one-line message on
stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import textwrap
import time
from typing import Callable, Sequence

import torch

from .corpus import DEFAULT_SHARD_SIZE, DEFAULT_TEXT_CHUNK_BYTES
from .variants import SIGLIP2_VARIANTS, VARIANTS, canonical_name, config_for, is_variant, matmul_flops

PROG = "siglip-fast"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_TEMPLATE = "This is a photo of {}."
CPU_BENCH_LAYERS = 1
# max |pooled - eager's| allowed, relative to max(1, max |eager's pooled output|), per dtype: fp32 as design.md's
# kernel-path parity (1e-4); bf16/fp16 a few dozen roundings of their unit (2^-8, 2^-11) through the layers
MAX_DIFF_BUDGET = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
CPU_WARN_FLOP = 1e12  # one forward above this on CPU is a GPU-sized run: warn with the estimated time
CPU_FLOPS = 1e11  # a rough CPU fp32 matmul rate for that estimate


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


def pick_dtype(name: str | None, device: torch.device, *, cpu_native_bf16: bool = False) -> torch.dtype:
    """--dtype, or the default: bf16 on CUDA; on CPU fp32, or with `cpu_native_bf16` (embed / classify) bf16 where
    the CPU computes it natively (AVX512-BF16 or AMX: about twice fp32's speed, pooled cosine >= 0.9999)."""
    if name is None:
        if device.type == "cuda":
            return torch.bfloat16
        from .cpu import default_cpu_dtype

        return default_cpu_dtype() if cpu_native_bf16 else torch.float32
    if name not in DTYPES:
        raise CLIError(f"--dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def random_model(config, device: torch.device, dtype: torch.dtype, backend: str = "eager"):
    """A SiglipModel (a Siglip2Model for a NaFlex Siglip2Config) with transformers' random initialisation, built
    directly on `device` in `dtype`."""
    from .configuration_siglip2 import Siglip2Config
    from .modeling import SiglipModel
    from .modeling_siglip2 import Siglip2Model

    cls = Siglip2Model if isinstance(config, Siglip2Config) else SiglipModel
    with torch.device(device):
        model = cls(config, backend=backend)
    return model.to(dtype).eval()


def is_naflex(model) -> bool:
    """A NaFlex SigLIP 2 model (Siglip2Model: pixel_values as padded patches with a mask and the patch grids)."""
    from .modeling_siglip2 import Siglip2Model

    return isinstance(model, Siglip2Model)


def transformers_twin(model, attn_implementation: str = "sdpa"):
    """The same weights in transformers' SiglipModel / Siglip2Model (state_dict keys are identical); None when
    transformers is not installed. An installed transformers that fails to import or to build the model raises."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers
    config = model.config
    naflex = is_naflex(model)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the CLIP-era bos/eos ids outside small vocabularies warn
    try:
        config_cls = transformers.Siglip2Config if naflex else transformers.SiglipConfig
        hf_config = config_cls(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict())
        hf_config._attn_implementation = attn_implementation
        with torch.device(model.device):
            hf = (transformers.Siglip2Model if naflex else transformers.SiglipModel)(hf_config)
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


def _check_checkpoint_arg(path: str) -> None:
    """embed / classify need trained weights: a bare shape name (random weights, for `bench`) is a usage error here
    (a hub id such as google/siglip-base-patch16-224 names the trained checkpoint and is fetched as one)."""
    if not os.path.exists(path) and "/" not in path and is_variant(path):
        raise CLIError(f"--model {path}: a shape name means random weights, which only `bench` takes; embed and "
                       "classify need a checkpoint directory (or a hub id such as google/siglip-base-patch16-224)")


def _load_model(path: str, device: torch.device, dtype: torch.dtype, backend: str):
    """A dual model from any SigLIP / SigLIP 2 checkpoint directory (load_model: SiglipModel or Siglip2Model)."""
    from .modeling import SiglipModel
    from .modeling_siglip2 import load_model

    _check_backend(backend, device)
    try:
        model = load_model(path, dtype=dtype, device=device, backend=backend)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise CLIError(f"--model {path}: {e}") from None
    if not isinstance(model, SiglipModel):
        raise CLIError(f"--model {path}: a {type(model).__name__} checkpoint; this needs both towers (a SiglipModel "
                       f"or Siglip2Model checkpoint, model_type 'siglip' or 'siglip2')")
    return model.eval()


def _load_dual(path: str, device: torch.device, dtype: torch.dtype, backend: str):
    """(model, processor) of any SigLIP / SigLIP 2 checkpoint (load_model / load_processor)."""
    from .corpus import CorpusError, load_dual_model

    _check_backend(backend, device)
    try:
        return load_dual_model(path, device, dtype, backend)
    except CorpusError as e:
        raise CLIError(str(e)) from None


def _tokenize(processor, model, texts: list[str], device: torch.device) -> dict:
    """SigLIP's training setting: padded to max_length (64 for SigLIP 2), truncated; the mask only if the tokenizer
    lists it."""
    from .corpus import text_length

    enc = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=text_length(processor, model),
                              return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def _image_inputs(processor, image, max_num_patches: int | None, device: torch.device, dtype: torch.dtype) -> dict:
    """The image processor's model inputs for one image on `device`: `pixel_values` (in `dtype`), and for NaFlex
    (`max_num_patches` set) `pixel_attention_mask` and `spatial_shapes`."""
    if max_num_patches is None:
        out = processor.image_processor([image], return_tensors="pt")
        return {"pixel_values": out["pixel_values"].to(device, dtype)}
    out = processor.image_processor([image], return_tensors="pt", max_num_patches=max_num_patches)
    return {"pixel_values": out["pixel_values"].to(device, dtype),
            "pixel_attention_mask": out["pixel_attention_mask"].to(device),
            "spatial_shapes": out["spatial_shapes"].to(device)}


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


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}" if abs(v) < 1e6 else f"{v:.3g}"
        return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"
    return str(v)


BENCH_IMPLS = ("triton", "triton-graph", "sdpa", "eager")


def naflex_inputs(vision_config, batch: int, max_num_patches: int, device: torch.device, dtype: torch.dtype,
                  generator: torch.Generator | None = None) -> dict:
    """Random NaFlex vision inputs laid out as Siglip2ImageProcessor lays out images of mixed aspect ratios (1:4 ..
    4:1, each resized by its rule to at most max_num_patches patches): `pixel_values` (B, N, C·p·p) with zero padding,
    `pixel_attention_mask` (B, N) int32 and `spatial_shapes` (B, 2)."""
    from .image_processing_siglip2 import get_image_size_for_max_num_patches

    gen = generator or torch.Generator().manual_seed(0)
    p, n = vision_config.patch_size, max_num_patches
    grids = []
    for _ in range(batch):
        h, w = (int(v) for v in torch.randint(64, 1025, (2,), generator=gen))
        ph, pw = get_image_size_for_max_num_patches(h, w, p, n)
        grids.append((ph // p, pw // p))
    shapes = torch.tensor(grids, dtype=torch.long)
    mask = (torch.arange(n)[None] < shapes.prod(-1)[:, None]).to(torch.int32)
    pixels = torch.randn(batch, n, vision_config.patch_dim, generator=gen) * mask[..., None]
    return {"pixel_values": pixels.to(device, dtype), "pixel_attention_mask": mask.to(device),
            "spatial_shapes": shapes.to(device)}


def graphed_forward(model, tower: str, pixels: torch.Tensor | dict | None,
                    ids: torch.Tensor | None) -> Callable[[], object]:
    """One tower ("vision": pixels, "text": ids) of a SiglipModel on the triton backend, captured in a CUDA graph at
    this batch size (compile_for_inference); the benchmarks build their graph rows with it too. For a NaFlex
    Siglip2Model `pixels` is the dict of its three vision inputs (naflex_inputs), captured at their max_num_patches."""
    model.set_backend("triton")
    if tower == "vision" and isinstance(pixels, dict):
        runner = model.vision_model.compile_for_inference(len(pixels["pixel_values"]),
                                                          max_num_patches=pixels["pixel_values"].shape[1])
        return lambda: runner(**pixels)
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
    if args.max_num_patches is not None and args.max_num_patches < 1:
        raise CLIError(f"--max-num-patches must be >= 1, got {args.max_num_patches}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BENCH_IMPLS:
            raise CLIError(f"--backends: expected a comma-separated subset of {','.join(BENCH_IMPLS)}, got {b!r}")
    model, desc, batch = _bench_setup(args, device, dtype)
    config = model.config
    vc, tc = config.vision_config, config.text_config
    naflex = is_naflex(model)
    if naflex:
        n_patches = args.max_num_patches or vc.num_patches
        desc += f", NaFlex at max_num_patches {n_patches}"
    elif args.max_num_patches is not None:
        raise CLIError("--max-num-patches applies to NaFlex SigLIP 2 models only (siglip2-*-naflex names, "
                       "model_type 'siglip2' checkpoints)")
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
    except Exception as e:  # an installed transformers that cannot import or build this model: a failed row
        hf_error = _short_error(e)
    if hf is not None or hf_error:
        impls.append("transformers-sdpa")
    else:
        print("  note: transformers is not installed: no transformers row.")

    gen = torch.Generator(device="cpu").manual_seed(0)
    if naflex:
        pixels = naflex_inputs(vc, batch, n_patches, device, dtype, gen)
        vision = lambda m: m.vision_model(**pixels)  # noqa: E731 (transformers' Siglip2VisionModel: same names)
        vision_flops = matmul_flops(config, images=batch, num_patches=n_patches)
    else:
        pixels = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=gen).to(device, dtype)
        vision = lambda m: m.vision_model(pixel_values=pixels)  # noqa: E731
        vision_flops = matmul_flops(config, images=batch)
    ids = torch.randint(0, tc.vocab_size, (batch, tc.max_position_embeddings), generator=gen).to(device)
    towers = {
        "vision": (vision, "img/s", vision_flops),
        "text": (lambda m: m.text_model(input_ids=ids), "texts/s", matmul_flops(config, texts=batch)),
    }
    selected = ["vision", "text"] if args.tower == "both" else [args.tower]

    budget = MAX_DIFF_BUDGET[str(dtype).removeprefix("torch.")]
    if device.type == "cpu":
        per_call = {t: towers[t][2] for t in selected}
        worst = max(per_call.values())
        if worst >= CPU_WARN_FLOP:
            calls = len(impls) * (args.reps + 2)
            total = sum(per_call.values()) * calls
            print(f"  warning: a GPU-sized run on CPU: {worst / 1e12:,.1f} TFLOP per forward (batch {batch}); at "
                  f"~{CPU_FLOPS / 1e9:.0f} GFLOP/s that is ~{_duration(worst / CPU_FLOPS)} per call and "
                  f"~{_duration(total / CPU_FLOPS)} for the whole run. Use --batch 2, a smaller --model, or a GPU.")
    print(f"  running: {', '.join(selected)} x {', '.join(impls)}; "
          f"{'do_bench medians' if device.type == 'cuda' else f'median of {args.reps} wall-clock run(s)'}; "
          f"max_diff budget vs eager: {budget:g} x max(1, max|eager|) ({str(dtype).removeprefix('torch.')})")
    widths = {"tower": 6, "impl": 22, "ms": 10, "items/s": 10, "TFLOP/s": 8, "vs_eager": 8, "peak_MiB": 9,
              "max_diff": 9}
    header = "  ".join(c.ljust(w) for c, w in widths.items()).rstrip()
    print()
    print(header)
    print("  ".join("-" * w for w in widths.values()))
    sys.stdout.flush()

    rows = []
    with torch.inference_mode():
        for tower in selected:
            forward, unit, flops = towers[tower]
            reference, eager_ms = None, None
            for impl in impls:
                row = {"tower": tower, "impl": impl + (" (interpreted)" if impl == "triton" and interpreted else "")}
                rows.append(row)
                print(f"  ... {tower} {row['impl']}", file=sys.stderr, flush=True)
                if impl == "transformers-sdpa" and hf is None:
                    row["error"] = hf_error
                    _print_row(row, widths)
                    continue
                try:
                    if impl == "triton-graph":
                        fn = graphed_forward(model, tower, pixels, ids)
                    else:
                        target = hf if impl == "transformers-sdpa" else model.set_backend(impl)
                        fn = lambda: forward(target)  # noqa: B023 (called within this iteration only)
                    out = pooled(fn()).float()
                    reference = out if impl == "eager" else reference
                    if reference is not None:
                        row["max_diff"] = diff = (out - reference).abs().max().item()
                        allowed = budget * max(1.0, reference.abs().max().item())
                        if not diff <= allowed:  # also NaN
                            row["over_budget"] = allowed
                    slow = impl == "triton" and interpreted  # the call above was the warm-up
                    ms = time_ms(fn, device, reps=1 if slow else args.reps, warmup=0)
                    eager_ms = ms if impl == "eager" else eager_ms
                    row.update({"ms": ms, "items/s": batch * 1e3 / ms, "TFLOP/s": flops / ms / 1e9,
                                "vs_eager": (eager_ms / ms) if eager_ms else None,
                                "peak_MiB": peak_mib(fn, device)})
                except Exception as e:  # a kernel failure is one row's error, not the end of the run
                    row["error"] = _short_error(e)
                _print_row(row, widths)
    print("\nitems/s: img/s (vision) or texts/s (text); max_diff: max |pooled output - eager backend's| on the same "
          "weights and inputs; vs_eager: eager ms / ms.")
    over = [r for r in rows if "over_budget" in r]
    failed = [r for r in rows if r.get("error")]
    if over:
        print(f"error: {len(over)} row(s) over the {str(dtype).removeprefix('torch.')} error budget "
              f"({', '.join(r['tower'] + ' ' + r['impl'] for r in over)}): their outputs are wrong", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} row(s) could not be measured: "
              + "; ".join(f"{r['tower']} {r['impl']}: {r['error']}" for r in failed), file=sys.stderr)
    return 1 if over or failed else 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_row(row: dict, widths: dict) -> None:
    line = "  ".join(_fmt(row.get(c)).ljust(w) for c, w in widths.items()).rstrip()
    if "over_budget" in row:
        line += f"  OVER BUDGET (allowed {row['over_budget']:.2g})"
    if row.get("error"):
        line += f"  {row['error']}"
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------------------------


def cmd_embed(args) -> int:
    """A thin layer over siglip_fast.corpus.embed_corpus (the job: units, resuming, torchrun ranks)."""
    from .corpus import CorpusError, embed_corpus

    if not args.inputs and not args.files and not args.texts:
        raise CLIError("nothing to embed: give image files, directories, tar shards (or a brace pattern such as "
                       "'data-{000000..000099}.tar'), --files lists and/or --texts")
    _check_checkpoint_arg(args.model)
    out = args.out
    try:
        result = embed_corpus(args.inputs, out, model=args.model, files=args.files or (), texts=args.texts or (),
                              tar=args.tar, fields=args.field, shard_size=args.shard_size,
                              text_chunk_bytes=args.text_chunk_bytes, batch_size=args.batch, workers=args.workers,
                              device=args.device, dtype=args.dtype, backend=args.backend,
                              cuda_graph=False if args.no_cuda_graph else None, max_num_patches=args.max_num_patches,
                              draft=not args.no_draft, progress=not args.quiet)
    except CorpusError as e:
        raise CLIError(str(e)) from None
    if result.rank == 0 and result.rows == 0:
        print("error: no input could be embedded" + (f"; {out} was left as it was" if out.endswith(".npy") else ""),
              file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------------------------


def zero_shot(model, processor, image, labels: list[str], template: str, device, dtype,
              max_num_patches: int | None = None) -> list[tuple[str, float]]:
    """SigLIP zero-shot: sigmoid(logits_per_image) for each templated label, sorted by probability. A NaFlex
    Siglip2Model takes the image at `max_num_patches` (default: its image processor's)."""
    from .corpus import naflex_patches

    texts = [template.format(label) for label in labels]
    enc = _tokenize(processor, model, texts, device)
    image_inputs = _image_inputs(processor, image, naflex_patches(model, processor, max_num_patches), device, dtype)
    with torch.inference_mode():
        logits = model(**image_inputs, **enc).logits_per_image[0].float()  # (num_labels,)
    probs = torch.sigmoid(logits).tolist()
    return sorted(zip(labels, probs, strict=True), key=lambda lp: -lp[1])


def cmd_classify(args) -> int:
    from .image_processing import load_image

    _check_checkpoint_arg(args.model)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device, cpu_native_bf16=True)
    if os.path.isdir(args.image):
        raise CLIError(f"{args.image!r} is a directory; classify takes one image file")
    if not os.path.isfile(args.image):
        raise CLIError(f"{args.image!r}: no such file")
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise CLIError(f"--labels: expected comma-separated labels, got {args.labels!r}")
    if args.max_num_patches is not None and args.max_num_patches < 1:
        raise CLIError(f"--max-num-patches must be >= 1, got {args.max_num_patches}")
    if "{}" not in args.template:
        raise CLIError(f"--template must contain '{{}}' where the label goes, got {args.template!r}")
    try:
        args.template.format("label")
    except (ValueError, IndexError, KeyError) as e:
        raise CLIError(f"--template {args.template!r} is not a valid format string ({e}); write a literal brace as "
                       f"'{{{{' or '}}}}', and '{{}}' where the label goes") from None
    try:
        image = load_image(args.image)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    from .corpus import CorpusError

    model, processor = _load_dual(args.model, device, dtype, args.backend)
    width = max(len(label) for label in labels)
    try:
        probs = zero_shot(model, processor, image, labels, args.template, device, dtype, args.max_num_patches)
    except CorpusError as e:
        raise CLIError(str(e)) from None
    for label, prob in probs:
        print(f"{label.ljust(width)}  {prob:.6f}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="siglip_fast: benchmark, embed and classify with SigLIP "
                                                            "and SigLIP 2.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bench,embed,classify}")

    def max_num_patches(p, default: str):
        p.add_argument("--max-num-patches", type=int, default=None, metavar="N",
                       help="NaFlex SigLIP 2 only: each image is resized, keeping its aspect ratio, to at most N "
                            f"patches and padded to N (e.g. 256 or 1024; default {default})")

    def common(p, *, backend: bool = True, cpu_bf16: bool = True):
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
        cpu_default = ("bf16 on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32" if cpu_bf16 else
                       "fp32 on CPU")
        p.add_argument("--dtype", choices=list(DTYPES), default=None,
                       help=f"weights and activations dtype (default: bf16 on CUDA; {cpu_default})")
        if backend:
            p.add_argument("--backend", choices=["auto", "triton", "eager", "sdpa"], default="auto",
                           help="siglip_fast backend (default auto: Triton kernels on CUDA, sdpa on CPU)")

    bench = sub.add_parser("bench", help="time every backend side by side (random weights)",
                           description="Time siglip_fast's backends side by side (and transformers when installed) "
                                       "after checking them against the eager reference. Default shape: "
                                       "so400m-patch14-384 on CUDA, batch 32; on CPU base-patch16-224 widths with "
                                       f"{CPU_BENCH_LAYERS} layer per tower, batch 2. SigLIP 2 names: "
                                       "siglip2-*-naflex build a Siglip2Model (NaFlex inputs at --max-num-patches), "
                                       "the fixed-resolution ones a SiglipModel.")
    bench.add_argument("--model", default=None,
                       help=f"a named shape ({', '.join(VARIANTS)}; also with the google/siglip- prefix; or SigLIP 2: "
                            f"{', '.join(SIGLIP2_VARIANTS)}, also with the google/ prefix) or a checkpoint directory")
    bench.add_argument("--batch", type=int, default=None, help="images (and texts) per call")
    bench.add_argument("--tower", choices=["vision", "text", "both"], default="both")
    bench.add_argument("--backends", default="triton,triton-graph,sdpa,eager",
                       help="comma-separated, default triton,triton-graph,sdpa,eager (triton-graph: the triton backend "
                            "replayed from a CUDA graph, GPU only)")
    bench.add_argument("--reps", type=int, default=3, help="timed repetitions on CPU (GPU: do_bench's median)")
    max_num_patches(bench, "the config's num_patches, 256 for the public checkpoints")
    common(bench, backend=False, cpu_bf16=False)
    bench.set_defaults(func=cmd_bench)

    embed = sub.add_parser(
        "embed", help="L2-normalised embeddings of a corpus of images and/or texts (by input shard, resumable, "
                      "torchrun on one node or many)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(textwrap.fill(p, 100) for p in (
            "Embed images (files; folders walked recursively, links followed; --files lists), WebDataset-style .tar "
            "shards (names, or brace patterns such as 'data-{000000..399999}.tar' in quotes) and/or texts (--texts: "
            "one per line) as float32 L2-normalised rows.",
            "The unit of work is the input shard: each tar, each --shard-size plain image files, each "
            "--text-chunk-bytes of a texts file. --out DIR gets one set of files per unit, written atomically, in "
            "clip-retrieval's layout: img_emb/img_emb_K.npy, text_emb/text_emb_K.npy, metadata/metadata_K.jsonl "
            "(each row's source, key, member, caption), stats/stats_K.json (counts, skipped inputs, checksums), and "
            "manifest.json. After any kill, rerun the command (any number of processes or nodes): finished units "
            "are verified and kept, only the rest is embedded; a different model, dtype, --field, unit size or input "
            "listing is refused; a second job on the same --out is refused by its lock. --out FILE.npy: one .npy "
            "plus FILE.json (written only when the run succeeds).",
            "Several processes: torchrun --nproc-per-node N [--nnodes M --rdzv-backend c10d --rdzv-endpoint "
            "HOST:PORT] -m siglip_fast embed ...: ranks take unfinished units one at a time from the torch.distributed "
            "store (on cuda:LOCAL_RANK; NCCL on GPUs, gloo on CPU). Unreadable inputs are skipped and listed, never "
            "fatal. Read the result with siglip_fast.load_embeddings(OUT).",
            "--model: any SigLIP or SigLIP 2 checkpoint directory (siglip_fast.load_model / load_processor). NaFlex "
            "SigLIP 2 (model_type siglip2): each image keeps its aspect ratio, resized to at most --max-num-patches "
            "patches. SigLIP 2 texts are padded to 64 tokens with truncation; SigLIP 2 was trained on lowercased "
            "text: the NaFlex checkpoints' Siglip2Tokenizer lowercases, the fixed-resolution ones' GemmaTokenizer "
            "does not (lowercase those texts yourself).")))
    embed.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="image files, folders, .tar shards or brace patterns of them")
    embed.add_argument("--model", required=True, help="checkpoint directory (or hub id) with the processor files")
    embed.add_argument("--out", required=True, help="a directory (per-unit output) or a file name ending in .npy")
    embed.add_argument("--files", action="append", default=None, metavar="LIST",
                       help="a file listing inputs, one path per line (tars: a unit each; other lines: images, in "
                            "units of --shard-size; relative paths are relative to the list file's folder; missing "
                            "entries are skipped and reported); repeatable")
    embed.add_argument("--texts", action="append", default=None, metavar="FILE",
                       help="a UTF-8 file with one text per line; repeatable")
    embed.add_argument("--tar", action="store_true",
                       help="treat every input file as a WebDataset tar shard (files ending .tar are anyway)")
    embed.add_argument("--field", default="image",
                       help="what to embed of each tar sample: 'image' (its image member, any image format; default), "
                            "a text member's extension such as 'txt' (the caption, embedded as a text), or both "
                            "comma-separated, e.g. 'image,txt'")
    embed.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                       help=f"plain image files per unit (default {DEFAULT_SHARD_SIZE:,}; each tar is one unit)")
    embed.add_argument("--text-chunk-bytes", type=int, default=DEFAULT_TEXT_CHUNK_BYTES,
                       help=f"bytes of a --texts file per unit (default {DEFAULT_TEXT_CHUNK_BYTES:,})")
    embed.add_argument("--batch", type=int, default=32, help="rows per model call (default 32)")
    embed.add_argument("--workers", type=int, default=None,
                       help="decoding processes per rank (0: decode in the main process; default on a GPU min(8, "
                            "cores per rank - 1), on CPU 0 below 8 cores per rank, else 1)")
    embed.add_argument("--no-draft", action="store_true",
                       help="decode every JPEG in full (default: a JPEG much larger than the model's input is decoded "
                            "at a reduced size, Image.draft; not bit-exact, see the README)")
    embed.add_argument("--no-cuda-graph", action="store_true",
                       help="run the towers directly instead of replaying them from CUDA graphs (GPU)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    max_num_patches(embed, "the checkpoint's image processor setting")
    common(embed)
    embed.set_defaults(func=cmd_embed)

    classify = sub.add_parser("classify", help="zero-shot probabilities of one image over labels",
                              description="SigLIP zero-shot classification: one independent sigmoid probability "
                                          "per label, printed from most to least likely. Any SigLIP or SigLIP 2 "
                                          "checkpoint; SigLIP 2 was trained on lowercased text (the NaFlex "
                                          "checkpoints' tokenizer lowercases, the fixed-resolution ones' does not: "
                                          "write labels and template in lower case).")
    classify.add_argument("image", metavar="IMAGE")
    classify.add_argument("--model", required=True, help="checkpoint directory (or hub id) with the processor files")
    classify.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')
    classify.add_argument("--template", default=DEFAULT_TEMPLATE, help=f'default "{DEFAULT_TEMPLATE}"')
    max_num_patches(classify, "the checkpoint's image processor setting")
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
