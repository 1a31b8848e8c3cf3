"""SigLIP 2 NaFlex vision tower: every implementation side by side on the same random weights and padded inputs.

Rows per case (one process, one set of weights; transformers gets the same weights through load_state_dict):
  triton             siglip_fast Siglip2VisionModel, backend="triton" (fused kernels, padding masked as keys; CUDA)
  triton-graph       the same replayed from a CUDA graph (compile_for_inference at that max_num_patches; CUDA,
                     inference only)
  sdpa / eager       siglip_fast with PyTorch SDPA attention / the eager reference
  transformers-sdpa  transformers' Siglip2VisionModel (its default attention), when transformers is installed
Figures as benchmarks/test_bench_model.py: median ms, img/s, TFLOP/s (siglip_fast.variants.naflex_vision_flops:
every padded token counted, as the GPU computes it), MFU against the measured bf16 GEMM peak, peak memory, max_err,
ratio = eager ms / ms. Every row's pooled output is checked before it is timed against a float64 copy of the tower
on the eager backend, on the first two images, as in benchmarks/test_bench_model.py (fp32 1e-4; bf16 2x the eager
backend's error in the same run); a row that raises or is over budget fails the test after every row is reported.
On CPU the `triton` row runs under the Triton interpreter: checked, not timed.

Inputs are what Siglip2ImageProcessor makes of images of mixed aspect ratios (patch grids from its resize rule,
padding patches masked). --bench-size full (GPU default): So400m/16 NaFlex (google/siglip2-so400m-patch16-naflex)
at 256 and 1024 patches in bf16. --bench-size small (CPU default): a tiny NaFlex config, fp32.
"""

from __future__ import annotations

import copy
import gc
import importlib.util

import pytest
import torch

from benchmarks._common import model_budget, report_model_rows, run_rows, time_main_row
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
    """(siglip_fast tower, transformers twin (None: not installed), float64 eager copy), kept while the shape's
    cases run. An installed transformers that cannot build the twin raises (the test fails)."""
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
        twin = None
        if importlib.util.find_spec("transformers") is not None:
            import transformers

            hf_config = transformers.Siglip2VisionConfig(**{k: v for k, v in config.to_dict().items()
                                                           if k not in ("model_type", "dtype")})
            twin = transformers.Siglip2VisionModel(hf_config).to(device=device, dtype=dtype).eval()
            twin.load_state_dict(model.state_dict())
        exact = copy.deepcopy(model).double().set_backend("eager")
        _CACHE[key] = (model, twin, exact)
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
    model, twin, exact = _models(shape, device, dtype)
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
        twin.train(train)
        return lambda: _step(twin, mode, pixels, mask, spatial)

    k = 2  # images checked against the float64 tower (each image's pooled output is its own)
    with torch.no_grad():
        ref = _step(exact, "vision", pixels[:k].double(), mask[:k], spatial[:k])

    impls = {backend: ours(backend) for backend in ("triton", "sdpa", "eager")}
    if device.type == "cuda" and not train:
        impls["triton-graph"] = graphed
    if twin is not None:
        impls["transformers-sdpa"] = theirs

    untimed = ["triton"] if device.type != "cuda" else []  # the interpreter on CPU: checked, not timed
    try:
        with torch.enable_grad() if train else torch.inference_mode():
            results, failures, main = run_rows(impls, lambda out: [out.float()[:k]], [ref],
                                               lambda errs: model_budget(dtype, errs), device, untimed=untimed)
            time_main_row(benchmark, main, device)  # the first implementation timed
    finally:
        model.eval()

    case = f"{shape} {mode} b{images} {str(dtype).removeprefix('torch.')}"
    report_model_rows(report, "siglip2", case, results, failures, untimed, twin, device, call_flops=flops,
                      items=images, unit="img_per_s")
