"""CPU inference, every engine side by side: siglip_fast's CPU paths beside transformers (sdpa, and in bf16),
torch.compile of transformers (with --compile-baselines: minutes of compiling), ONNX Runtime and OpenVINO (rows when
installed, `pip install -e .[bench-cpu]`; otherwise a row saying why not) and both fp32 models under bf16
autocast, at the base-224 shape with the same random weights everywhere: the vision tower on 8 images and the text
tower on 32 texts of 64 tokens.

All candidates of a case run in one process, interleaved: each round calls every candidate once, in an order rotated
and reversed from round to round (A B C, C B A, B C A, ...), and every figure is the median over rounds of the paired
ratio transformers-sdpa-fp32 / candidate, from the wall clock (`ratio`) and from the process CPU time of all threads
(`cpu_ratio`: the work done, steadier when other processes share the cores). `gflops` = the tower's true FLOPs /
median wall time; `max_err` = max |pooled - transformers fp32 pooled|; `cos` = the smallest cosine similarity of a
pooled row with transformers fp32's. Two rows are ceilings, not models: "bound: the GEMMs alone" runs only the
tower's large matrix products (`gemm_shapes`: ~96 % of its FLOPs) on oneDNN's prepacked GEMM in fp32 and in bf16,
interleaved with the rest, so their ratio is more than any engine computing the tower in that dtype with these
kernels can reach on this CPU. The run asserts what must hold whatever the load: siglip_fast's fp32 default
within 1e-4 of transformers, its bf16 mode at cosine >= 0.9999. The speed targets of issue 24 (auto fp32 >= 3x
transformers on vision, >= 2.7x on text; bf16 >= OpenVINO bf16) are printed with the measured ratios, not asserted:
on shared cores the ratios of every engine move with the load (see README, "The backend switch").

    pytest benchmarks/test_bench_cpu.py -s --bench-size full [--compile-baselines]   (7 rounds: 6 minutes on 2 idle
    cores; the default --bench-size small on a machine without a GPU times 5)
"""

from __future__ import annotations

import copy
import importlib.util
import io
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from siglip_fast.cli import pooled, random_model, transformers_twin
from siglip_fast.cpu import cpu_has_native_bf16
from siglip_fast.variants import config_for

transformers = pytest.importorskip("transformers")

ROUNDS = {"full": 7, "small": 5}  # --bench-size: small (the default without a GPU, CI's) times 5 rounds
CASES = {"vision": 8, "text": 32}  # images per call; texts (of 64 tokens) per call
TEXT_LEN = 64
BASELINE = "transformers sdpa fp32"


def tower_flops(config, mode: str, batch: int) -> float:
    """True FLOPs of one tower forward (multiply-add = 2): patch/projection GEMMs, attention's two products, the
    MAP head (vision) or the text head."""
    c = config.vision_config if mode == "vision" else config.text_config
    D, inter, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    n = (c.image_size // c.patch_size) ** 2 if mode == "vision" else TEXT_LEN
    tokens = batch * n
    per_layer = 2 * tokens * (4 * D * D + 2 * D * inter) + 4 * batch * n * n * D
    flops = layers * per_layer
    if mode == "vision":
        flops += 2 * tokens * D * c.num_channels * c.patch_size**2  # patch embedding
        flops += 2 * tokens * 2 * D * D + 4 * batch * n * D + 2 * batch * (2 * D * D + 2 * D * inter)  # MAP head
    else:
        flops += 2 * batch * D * c.projection_size
    return float(flops)


def gemm_shapes(config, mode: str, batch: int) -> list[tuple[int, int, int, int]]:
    """(M, K, N, times) of the tower's large matrix products: each layer's q/k/v (one GEMM), out, fc1, fc2, and the
    patch embedding (vision). Attention's products, the norms, the head and every elementwise op are left out."""
    c = config.vision_config if mode == "vision" else config.text_config
    D, inter, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    tokens = batch * ((c.image_size // c.patch_size) ** 2 if mode == "vision" else TEXT_LEN)
    shapes = [(tokens, D, 3 * D, layers), (tokens, D, D, layers), (tokens, D, inter, layers),
              (tokens, inter, D, layers)]
    if mode == "vision":
        shapes.append((tokens, c.num_channels * c.patch_size**2, D, 1))
    return shapes


def _gemm_bound(shapes, dtype: torch.dtype) -> Callable[[], None] | str:
    """The tower's GEMMs alone (`gemm_shapes`) on torch's fastest CPU GEMM, oneDNN with prepacked weights and no
    epilogue: a lower bound on the time of any engine that computes the tower in `dtype` with oneDNN's kernels (it
    skips all the rest), so baseline / this is a ceiling on the ratio an engine can reach on this CPU."""
    from siglip_fast import cpu

    if not cpu.available():
        return "this torch build has no oneDNN CPU kernels"
    if dtype == torch.bfloat16 and not cpu_has_native_bf16():
        return "no native bf16 on this CPU"
    linear = torch.ops.mkldnn._linear_pointwise
    gen = torch.Generator().manual_seed(2)
    work = [(torch.randn(M, K, generator=gen).to(dtype),
             torch.ops.mkldnn._reorder_linear_weight((torch.randn(N, K, generator=gen) / K**0.5).to(dtype)),
             times) for M, K, N, times in shapes]

    def run():
        for x, w, times in work:
            for _ in range(times):
                linear(x, w, None, "none", [], "")
    return run


class _Tower(torch.nn.Module):
    """A tower as a one-tensor → pooled-tensor module, for the exporters (ONNX, OpenVINO) and torch.compile."""

    def __init__(self, model, mode: str):
        super().__init__()
        self.tower = model.vision_model if mode == "vision" else model.text_model
        self.key = "pixel_values" if mode == "vision" else "input_ids"

    def forward(self, x):
        return pooled(self.tower(**{self.key: x}))


def _openvino(hf, mode: str, x: torch.Tensor):
    """(fp32 candidate, bf16 candidate) compiled by OpenVINO from transformers' tower, or (reason, reason)."""
    if importlib.util.find_spec("openvino") is None:
        return ("not installed (pip install openvino)",) * 2
    import openvino as ov

    with torch.no_grad():
        graph = ov.convert_model(_Tower(hf, mode).eval(), example_input=x)
    core, threads = ov.Core(), torch.get_num_threads()
    out = []
    for precision in ("f32", "bf16"):
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
        request, array = compiled.create_infer_request(), x.numpy()
        out.append(lambda request=request, array=array: torch.from_numpy(request.infer({0: array})[0].copy()))
    return tuple(out)


def _onnxruntime(hf, mode: str, x: torch.Tensor):
    """An ONNX Runtime fp32 candidate from transformers' tower (TorchScript ONNX export), or the reason why not."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"not installed (pip install {' '.join(missing)})"
    import onnxruntime as ort

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_Tower(hf, mode).eval(), (x,), buffer, input_names=["x"], output_names=["pooled"],
                          dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    array = x.numpy()
    return lambda: torch.from_numpy(session.run(None, {"x": array})[0])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = random_model(config_for("base-patch16-224"), torch.device("cpu"), torch.float32, backend="auto")
    return model, transformers_twin(model, "sdpa")


def _autocast(tower, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The fp32 model under torch.autocast("cpu", dtype=torch.bfloat16): the drop-in user's mixed precision."""
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tower(x)
    return run


def _candidates(model, hf, mode: str, x: torch.Tensor, compile_baselines: bool):
    """name → fn() returning the pooled output, or name → the reason the row is skipped."""
    tower = _Tower(model, mode)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    xb = x.bfloat16() if x.is_floating_point() else x
    sdpa = copy.deepcopy(model).set_backend("sdpa")
    c: dict[str, Callable[[], torch.Tensor] | str] = {
        BASELINE: lambda: _Tower(hf, mode)(x),
        "siglip_fast auto fp32": lambda: tower(x),
        "siglip_fast sdpa fp32": lambda: _Tower(sdpa, mode)(x),
        "transformers sdpa bf16": lambda: _Tower(hf_bf16, mode)(xb),
        "siglip_fast auto bf16": lambda: _Tower(model_bf16, mode)(xb),
        "transformers fp32 under bf16 autocast": _autocast(_Tower(hf, mode), x),
        "siglip_fast auto fp32 under bf16 autocast": _autocast(tower, x),
    }
    c["OpenVINO fp32"], c["OpenVINO bf16"] = _openvino(hf, mode, x)
    c["ONNX Runtime fp32"] = _onnxruntime(hf, mode, x)
    if compile_baselines:
        compiled = torch.compile(_Tower(hf, mode))
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        c[f"torch.compile(transformers) fp32 ({time.perf_counter() - t0:.0f} s compile)"] = lambda: compiled(x)
    else:
        c["torch.compile(transformers) fp32"] = "opt-in: --compile-baselines (minutes of compiling)"
    return c


@pytest.mark.parametrize("mode", sorted(CASES))
def test_cpu_engines(models, mode, report, compile_baselines, bench_size):
    model, hf = models
    batch = CASES[mode]
    torch.manual_seed(1)
    if mode == "vision":
        x = torch.randn(batch, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    else:
        x = torch.randint(0, model.config.text_config.vocab_size, (batch, TEXT_LEN))
    cands = _candidates(model, hf, mode, x, compile_baselines)
    shapes = gemm_shapes(model.config, mode, batch)
    bounds = {f"bound: the GEMMs alone, oneDNN {name}": _gemm_bound(shapes, dtype)
              for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    runs = {name: fn for name, fn in {**cands, **bounds}.items() if callable(fn)}
    names = list(runs)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        outs = {n: fn().float() for n, fn in runs.items() if n not in bounds}  # also the warm-up of each
        for n in bounds:
            if n in runs:
                runs[n]()
        ref = outs[BASELINE]
        for r in range(ROUNDS[bench_size]):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order if r % 2 == 0 else order[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                runs[n]()
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
    flops = tower_flops(model.config, mode, batch)
    case = f"B/16-224 {mode} batch {batch}" + (f" x {TEXT_LEN} tokens" if mode == "text" else "")
    gemm_flops = sum(2.0 * M * K * N * times for M, K, N, times in shapes)
    ratios = {}
    for n in names:
        ratio = statistics.median(b / a for a, b in zip(wall[n], wall[BASELINE], strict=True))
        cpu_ratio = statistics.median(b / a for a, b in zip(cpu[n], cpu[BASELINE], strict=True))
        ms = statistics.median(wall[n]) * 1e3
        ratios[n] = ratio
        if n in bounds:  # no output to check; gflops = the GEMMs' own FLOPs / their time
            report("cpu engines", case, n, ms=ms, cpu_ms=statistics.median(cpu[n]) * 1e3, ratio=ratio,
                   cpu_ratio=cpu_ratio, gflops=gemm_flops / ms / 1e6, note="a ceiling, not a model: see gemm_shapes")
            continue
        err = (outs[n] - ref).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(outs[n], ref, dim=-1).min().item()
        report("cpu engines", case, n, ms=ms, cpu_ms=statistics.median(cpu[n]) * 1e3, ratio=ratio,
               cpu_ratio=cpu_ratio, gflops=flops / ms / 1e6, max_err=err, cos=f"{cos:.6f}")
    for n, why in {**cands, **bounds}.items():
        if not callable(why):
            report("cpu engines", case, n, note=f"skipped: {why}")
    target = 3.0 if mode == "vision" else 2.7
    met = ratios["siglip_fast auto fp32"] >= target
    ceiling = ratios.get("bound: the GEMMs alone, oneDNN fp32")
    print(f"\n[{case}] {ROUNDS[bench_size]} interleaved rounds, {torch.get_num_threads()} threads, native bf16: "
          f"{cpu_has_native_bf16()}; target auto fp32 >= {target}x: {ratios['siglip_fast auto fp32']:.2f}x "
          f"({'met' if met else 'not met'}; the fp32 GEMMs alone, {gemm_flops / flops:.1%} of the FLOPs, reach "
          f"{'-' if ceiling is None else f'{ceiling:.2f}x'})")
    if "OpenVINO bf16" in ratios:
        print(f"[{case}] bf16: siglip_fast {ratios['siglip_fast auto bf16']:.2f}x vs OpenVINO "
              f"{ratios['OpenVINO bf16']:.2f}x; fp32: siglip_fast {ratios['siglip_fast auto fp32']:.2f}x vs "
              f"OpenVINO {ratios['OpenVINO fp32']:.2f}x")
    assert (outs["siglip_fast auto fp32"] - ref).abs().max().item() <= 1e-4
    for n in ("siglip_fast auto bf16", "siglip_fast auto fp32 under bf16 autocast"):
        assert torch.nn.functional.cosine_similarity(outs[n], ref, dim=-1).min().item() >= 0.9999, n
