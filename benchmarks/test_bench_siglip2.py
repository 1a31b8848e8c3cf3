"""SigLIP 2 NaFlex vision tower: every implementation side by side on the same random weights and padded inputs.

Rows per case (one process, one set of weights; transformers gets the same weights through load_state_dict):
  triton             siglip_fast Siglip2VisionModel, backend="triton" (fused kernels, padding masked as keys; CUDA)
  triton-graph       the same replayed from a CUDA graph (compile_for_inference at that max_num_patches; CUDA,
                     inference only)
  sdpa / eager       siglip_fast with PyTorch SDPA attention / the eager reference
  transformers-sdpa  transformers' Siglip2VisionModel (its default attention), when transformers is installed
Figures as benchmarks/test_bench_model.py: median ms, img/s, TFLOP/s (siglip_fast.variants.naflex_vision_flops:
every padded token counted, as the GPU computes it), MFU against the measured bf16 GEMM peak, peak memory, max_err
against eager's pooled output, ratio = eager ms / ms.

Inputs are what Siglip2ImageProcessor makes of images of mixed aspect ratios (patch grids from its resize rule,
padding patches masked). --bench-size full (GPU default): So400m/16 NaFlex (google/siglip2-so400m-patch16-naflex)
at 256 and 1024 patches in bf16. --bench-size small (CPU default): a tiny NaFlex config, fp32.
"""

from __future__ import annotations

import gc

import pytest
import torch

from benchmarks._common import gemm_peak_tflops, peak_memory_mib, sync, time_ms
from siglip_fast.configuration_siglip2 import Siglip2VisionConfig
from siglip_fast.image_processing_siglip2 import get_image_size_for_max_num_patches
from siglip_fast.modeling_siglip2 import Siglip2VisionModel
from siglip_fast.variants import config_for, naflex_vision_flops

# shape -> (vision config, max_num_patches, images per inference call, images per training step)
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_patches=16, patch_size=8)
SHAPES = {
    "tiny-naflex-24": ("tiny", 24, 2, 2),
    "So400m/16-naflex-256": ("siglip2-so400m-patch16-naflex", 256, 128, 32),
    "So400m/16-naflex-1024": ("siglip2-so400m-patch16-naflex", 1024, 32, 8),
}
MODES = ("vision", "vision-train")
CASES = [(shape, mode) for shape in SHAPES for mode in MODES]
GPU_ONLY = "So400m/16 NaFlex at 256/1024 patches runs on CUDA only (--bench-size full on a GPU); minutes on CPU"
SMALL_ONLY = "the tiny NaFlex config runs with --bench-size small"

_CACHE: dict = {}


def _vision_config(name: str) -> Siglip2VisionConfig:
    return Siglip2VisionConfig(**TINY_VISION) if name == "tiny" else config_for(name).vision_config


def _models(shape: str, device: torch.device, dtype: torch.dtype):
    """(siglip_fast tower, transformers twin or None, error), kept while the shape's cases run."""
    key = (shape, device, dtype)
    if key not in _CACHE:
        _CACHE.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        config = _vision_config(SHAPES[shape][0])
        torch.manual_seed(0)
        with torch.device(device):
            model = Siglip2VisionModel(config).to(dtype).eval()
        try:
            import transformers

            hf_config = transformers.Siglip2VisionConfig(**{k: v for k, v in config.to_dict().items()
                                                           if k not in ("model_type", "dtype")})
            twin = transformers.Siglip2VisionModel(hf_config).to(device=device, dtype=dtype).eval()
            twin.load_state_dict(model.state_dict())
            error = None
        except Exception as e:  # not installed, or a version that cannot take this config: one row's error
            twin, error = None, f"{type(e).__name__}: {e}"
        _CACHE[key] = (model, twin, error)
    return _CACHE[key]


def _inputs(config: Siglip2VisionConfig, images: int, max_patches: int, device, dtype):
    """Padded patches of images with mixed aspect ratios (1:4 .. 4:1), as the image processor lays them out."""
    g = torch.Generator().manual_seed(1)
    shapes = []
    for _ in range(images):
        h, w = (int(v) for v in torch.randint(64, 1025, (2,), generator=g))
        ph, pw = get_image_size_for_max_num_patches(h, w, config.patch_size, max_patches)
        shapes.append((ph // config.patch_size, pw // config.patch_size))
    spatial = torch.tensor(shapes, dtype=torch.long, device=device)
    mask = (torch.arange(max_patches, device=device)[None] < spatial.prod(-1)[:, None]).to(torch.int32)
    pixels = torch.randn(images, max_patches, config.patch_dim, device=device, dtype=dtype) * mask[..., None]
    return pixels, mask, spatial


def _step(module, mode: str, pixels, mask, spatial):
    out = module(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=spatial).pooler_output
    if mode == "vision-train":
        out.backward(torch.ones_like(out))
        module.zero_grad(set_to_none=True)
    return out.detach()


@pytest.mark.parametrize("shape, mode", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_bench_siglip2_naflex(shape, mode, benchmark, device, bench_size, report):
    tiny = shape.startswith("tiny")
    if tiny and bench_size != "small":
        pytest.skip(SMALL_ONLY)
    if not tiny and (bench_size != "full" or device.type != "cuda"):
        pytest.skip(GPU_ONLY)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, twin, twin_error = _models(shape, device, dtype)
    config = model.config
    _, max_patches, images, train_images = SHAPES[shape]
    train = mode == "vision-train"
    if train:
        images = train_images
        model.train()
    pixels, mask, spatial = _inputs(config, images, max_patches, device, dtype)
    flops = images * naflex_vision_flops(config, max_patches) * (3 if train else 1)

    def ours(backend):
        def factory():
            def fn():
                model.set_backend(backend)
                return _step(model, mode, pixels, mask, spatial)
            return fn
        return factory

    def graphed():
        model.set_backend("triton")
        runner = model.compile_for_inference(images, max_num_patches=max_patches)
        return lambda: runner(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=spatial).pooler_output

    def theirs():
        if twin is None:
            raise RuntimeError(twin_error)
        twin.train(train)
        return lambda: _step(twin, mode, pixels, mask, spatial)

    impls = {}
    for backend in (["triton"] if device.type == "cuda" else []) + ["sdpa", "eager"]:
        impls[backend] = ours(backend)
    if device.type == "cuda" and not train:
        impls["triton-graph"] = graphed
    impls["transformers-sdpa"] = theirs

    results, main_fn = {}, None
    with torch.enable_grad() if train else torch.inference_mode():
        for name, factory in impls.items():
            try:
                fn = factory()
                out = fn().float()  # warm-up: autotuning and compilation out of the timings
                sync(device)
                ms = time_ms(fn, device)
                results[name] = {"out": out, "ms": ms, "peak_mib": peak_memory_mib(fn, device)}
                main_fn = main_fn or fn
            except Exception as e:  # a failing row is reported; the others still run
                results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]}
        if main_fn is not None:
            def call():
                main_fn()
                sync(device)

            benchmark.pedantic(call, rounds=10 if device.type == "cuda" else 3, iterations=1, warmup_rounds=1)
    model.eval()

    peak = gemm_peak_tflops(device)
    eager = results.get("eager", {})
    case = f"{shape} {mode} b{images} {str(dtype).removeprefix('torch.')}"
    for name, r in results.items():
        if "error" in r:
            report("siglip2", case, name, error=r["error"])
            continue
        tflops = flops / r["ms"] / 1e9
        max_err = (r["out"] - eager["out"]).abs().max().item() if "out" in eager else None
        report("siglip2", case, name, ms=r["ms"], img_per_s=images * 1e3 / r["ms"], tflops=tflops,
               mfu=tflops / peak if peak else None, peak_mib=r["peak_mib"],
               ratio=eager["ms"] / r["ms"] if "ms" in eager else None, max_err=max_err)
    assert "ms" in eager, f"the eager reference failed: {eager.get('error')}"
