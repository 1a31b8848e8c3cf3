"""Model level: the vision tower, the text tower and the dual model, inference and a vision training step, every
implementation side by side on the same random weights and inputs.

Rows per case (one process, one set of weights; transformers gets the same weights through load_state_dict):
  triton             siglip_fast, backend="triton" (the fused kernels; CUDA only)
  triton-graph       the same tower replayed from a CUDA graph (compile_for_inference; CUDA, inference only)
  sdpa               siglip_fast, backend="sdpa" (eager ops, PyTorch SDPA attention)
  eager              siglip_fast, backend="eager" (the reference: what transformers' eager path computes)
  transformers-sdpa  transformers' SiglipModel, attn_implementation="sdpa" (when transformers is installed)
  transformers-sdpa+compile  the same under torch.compile (only with --compile-baselines)
Figures: median ms, img/s or texts/s, TFLOP/s from the analytic matmul FLOP count (siglip_fast.variants:
patch embed, QKV, attention at the true head dim, out proj, MLP, MAP head, text head; a training step counts 3x the
forward), MFU against the measured bf16 GEMM peak, peak memory, max_err and ratio = eager ms / ms, all from the same
run.

Every row's result (pooled embeddings, or the dual model's logits) is checked before it is timed against a float64
copy of the model on the eager backend, on the first two images / texts of the batch: max_err = max|out - ref| /
max|ref|, within 1e-4 in fp32 and, in bf16, within 2x the eager backend's own error in the same run (design.md's
budget; at least benchmarks/_common.REL_BUDGET's bound). A row that raises or is over budget fails the test after
every row has been reported. The training rows check the forward output they return (the gradients are checked by
the op benchmarks and tests/). On CPU the `triton` row runs the kernels under the Triton interpreter: checked, not
timed.

--bench-size full (GPU default): B/16-224, B/16-384, L/16-384 and So400m/14-384 in bf16, batches sized for an
80 GB card. --bench-size small (CPU default): a tiny config (2 layers, hidden 64, image 32, patch 8, batch 2) with
eager, sdpa and transformers timed and triton checked.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from benchmarks._common import TINY, model_budget, report_model_rows, run_rows, time_main_row
from siglip_fast.cli import graphed_forward, pooled, random_model, transformers_twin
from siglip_fast.configuration import SiglipConfig
from siglip_fast.variants import config_for, matmul_flops

# shape -> (variant, images per inference call, texts per call, images per training step)
SHAPES = {
    "tiny": (None, 2, 2, 2),
    "B/16-224": ("base-patch16-224", 512, 1024, 256),
    "B/16-384": ("base-patch16-384", 256, 1024, 64),
    "L/16-384": ("large-patch16-384", 128, 1024, 32),
    "So400m/14-384": ("so400m-patch14-384", 128, 1024, 32),
}
MODES = ("vision", "text", "dual", "vision-train")
CASES = [(shape, mode) for shape in SHAPES for mode in MODES]
CHECK_ITEMS = 2  # images / texts of each batch checked against the float64 model
GPU_ONLY = "the real checkpoint shapes run on CUDA only (--bench-size full on a GPU); minutes per call on CPU"
SMALL_ONLY = "the tiny config runs with --bench-size small"

_CACHE: dict = {}


def _models(shape: str, device: torch.device, dtype: torch.dtype):
    """(siglip_fast model, transformers twin (None: not installed), float64 eager copy) for one shape, kept while
    the shape's cases run. A transformers that is installed but cannot build the twin raises (the test fails)."""
    key = (shape, device, dtype)
    if key not in _CACHE:
        _CACHE.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        variant = SHAPES[shape][0]
        config = SiglipConfig(**TINY) if variant is None else config_for(variant)
        torch.manual_seed(0)
        model = random_model(config, device, dtype)
        exact = copy.deepcopy(model).double().set_backend("eager")
        _CACHE[key] = (model, transformers_twin(model, "sdpa"), exact)
    return _CACHE[key]


def _module(model, mode: str):
    """What one step of `mode` calls: a tower, or the dual model."""
    if mode == "text":
        return model.text_model
    return model if mode == "dual" else model.vision_model


def _step(module, mode: str, pixels, ids):
    """One step of `mode` (siglip_fast or transformers module); returns the output compared across impls."""
    if mode == "text":
        return pooled(module(input_ids=ids))
    if mode == "dual":
        return module(input_ids=ids, pixel_values=pixels).logits_per_image
    out = pooled(module(pixel_values=pixels))
    if mode == "vision-train":  # forward + backward of the vision tower
        out.backward(torch.ones_like(out))
        module.zero_grad(set_to_none=True)
    return out.detach()


def _siglip_fast_step(model, mode: str, backend: str, pixels, ids):
    def factory():
        def fn():
            model.set_backend(backend)  # set per call: the rows share one model
            return _step(_module(model, mode), mode, pixels, ids)
        return fn
    return factory


def _graphed_step(model, mode: str, pixels, ids):
    """The CUDA-graph runner of one tower (compile_for_inference), built on the triton backend; its peak memory row
    counts only what a call allocates (the graph's activation pool is allocated once, at capture)."""
    def factory():
        run = graphed_forward(model, mode, pixels, ids)
        return lambda: run().pooler_output
    return factory


def _twin_step(twin, mode: str, pixels, ids, *, compile: bool):
    def factory():
        target = _module(twin, mode)
        target = torch.compile(target, dynamic=False) if compile else target
        return lambda: _step(target, mode, pixels, ids)
    return factory


@pytest.mark.parametrize("shape, mode", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_bench_model(shape, mode, benchmark, device, bench_size, report, compile_baselines):
    if shape == "tiny" and bench_size != "small":
        pytest.skip(SMALL_ONLY)
    if shape != "tiny" and (bench_size != "full" or device.type != "cuda"):
        pytest.skip(GPU_ONLY)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, twin, exact = _models(shape, device, dtype)
    config = model.config
    _, images, texts, train_images = SHAPES[shape]
    if mode == "vision-train":
        images = train_images
    vc, tc = config.vision_config, config.text_config
    pixels = torch.randn(images, vc.num_channels, vc.image_size, vc.image_size, device=device, dtype=dtype)
    ids = torch.randint(0, tc.vocab_size, (texts, tc.max_position_embeddings), device=device)
    if mode == "dual":
        ids = ids[:images]  # image-text pairs
    n_items, unit = (len(ids), "texts_per_s") if mode == "text" else (images, "img_per_s")
    flops = matmul_flops(config, images=0 if mode == "text" else images, texts=len(ids) if mode in ("text", "dual")
                         else 0, backward=mode == "vision-train")

    # ideal traffic: the weights read once (and their gradients written once in training), inputs read once
    weight_bytes = sum(p.numel() * p.element_size() for p in _module(model, mode).parameters())
    input_bytes = (pixels.numel() * pixels.element_size() if mode != "text" else 0) + (
        ids.numel() * ids.element_size() if mode in ("text", "dual") else 0)
    nbytes = weight_bytes * (2 if mode == "vision-train" else 1) + input_bytes

    # the reference: the float64 model on the first items (rows are independent: pooled embeddings per item, and
    # the dual logits of the first images against the first texts)
    k = CHECK_ITEMS
    with torch.no_grad():
        ref = _step(_module(exact, mode), "vision" if mode == "vision-train" else mode, pixels[:k].double(), ids[:k])

    def first_items(out):
        return [out[:k, :k] if mode == "dual" else out[:k]]

    impls = {}  # name -> factory of the step to time (called inside the row: a failing build is its failure)
    for backend in ["triton", "sdpa", "eager"]:
        impls[backend] = _siglip_fast_step(model, mode, backend, pixels, ids)
    if device.type == "cuda" and mode in ("vision", "text"):
        impls["triton-graph"] = _graphed_step(model, mode, pixels, ids)
    if twin is not None:
        impls["transformers-sdpa"] = _twin_step(twin, mode, pixels, ids, compile=False)
        if compile_baselines:
            impls["transformers-sdpa+compile"] = _twin_step(twin, mode, pixels, ids, compile=True)

    train = mode == "vision-train"
    untimed = ["triton"] if device.type != "cuda" else []  # the interpreter on CPU: checked, not timed
    with torch.enable_grad() if train else torch.inference_mode():
        results, failures, main = run_rows(
            impls, lambda out: first_items(out.float()), [ref], lambda errs: model_budget(dtype, errs), device,
            untimed=untimed)
        time_main_row(benchmark, main, device)  # pytest-benchmark's record: the first implementation timed

    case = f"{shape} {mode} b{n_items} {str(dtype).removeprefix('torch.')}"
    report_model_rows(report, "model", case, results, failures, untimed, twin, device, call_flops=flops,
                      items=n_items, unit=unit, flops=flops, bytes=nbytes)
