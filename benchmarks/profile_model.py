"""Where a model step's time goes: the torch profiler's per-kernel times, grouped by what the kernel does.

    python -m benchmarks.profile_model --variant so400m-patch14-384 --batch 128 \
        --impl triton --impl triton-graph --impl transformers-sdpa [--train] [--steps 5]

For each implementation it profiles `--steps` steps (after a warm-up step) of the vision tower on the same random
weights and inputs, and prints one table: per category the device time per step (ms), its share of the step's
kernel time, kernel launches per step and the time per encoder layer; then the total kernel time against the wall
time of a step (a wall time well above the kernel time means the step is launch-bound). On CPU (tests, tiny
configs) the CPU self time of each operator is grouped the same way.

Kernels are grouped by name, so a category is what a kernel does, not which module launched it: in the eager and
sdpa rows the attention's QK^T and PV matmuls are GEMM kernels and are counted as `gemm`; under torch.compile fused
kernels are named after their first fused op.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import sync

# (category, pattern on the kernel / operator name), first match wins.
CATEGORIES = [
    ("attention", re.compile(r"attention|attn|fmha|flash|softmax", re.I)),
    ("layer_norm", re.compile(r"layer_?norm", re.I)),
    ("patch_embed", re.compile(r"patch_embed|conv|im2col|implicit_?gemm", re.I)),
    ("fused_linear", re.compile(r"_linear_(fwd|bwd)_kernel")),
    ("gemm", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|aten::(addmm|mm|bmm|matmul|linear|baddbmm)\b", re.I)),
    ("gelu", re.compile(r"gelu|tanh", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|triton_poi|aten::(add|mul|div|sub|copy_|cat|fill_|"
                               r"to|_to_copy|clone|contiguous|expand|index_select|embedding)\b|memcpy|memset", re.I)),
    ("reduction", re.compile(r"reduce|triton_(per|red)|aten::(sum|mean|norm|linalg_vector_norm)\b", re.I)),
]
IMPLS = ("triton", "triton-graph", "sdpa", "eager", "transformers-sdpa", "transformers-sdpa+compile")


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if pattern.search(name):
            return cat
    return "other"


def category_totals(events, device_type: str, steps: int) -> dict[str, tuple[float, float, tuple[float, str]]]:
    """Group profiler averages by category: {cat: (us per step, launches per step, (us, name) of the largest)}.

    On CUDA only device events count (kernels, memcpy, memset): a CPU operator's self device time is the time of the
    kernels it launched, which appear as events of their own, so counting it too would count them twice. On CPU the
    aten operators' self CPU times count."""
    totals: dict[str, list] = {}
    for event in events:
        if device_type == "cuda":
            if event.device_type == DeviceType.CPU:
                continue
            us = float(event.self_device_time_total)
        else:
            if not event.key.startswith("aten::"):
                continue
            us = float(event.self_cpu_time_total)
        if us <= 0:
            continue
        entry = totals.setdefault(category(event.key), [0.0, 0.0, (0.0, "")])
        entry[0] += us / steps
        entry[1] += event.count / steps
        entry[2] = max(entry[2], (us / steps, event.key))
    return {k: tuple(v) for k, v in totals.items()}


def profile_step(fn: Callable[[], object], device: torch.device, steps: int) -> dict:
    """Profile `steps` calls of fn: {'categories': {cat: (us per step, launches per step, (us, name) of the largest
    kernel)}, 'kernel_ms': kernel time per step, 'wall_ms': wall time per step}."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    fn()  # warm-up: compilation and autotuning stay out of the profile
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps

    totals = category_totals(prof.key_averages(), device.type, steps)
    kernel_ms = sum(entry[0] for entry in totals.values()) / 1e3
    return {"categories": totals, "kernel_ms": kernel_ms, "wall_ms": wall_ms}


def format_profile(name: str, result: dict, layers: int) -> list[str]:
    cats = sorted(result["categories"].items(), key=lambda kv: -kv[1][0])
    total_us = result["kernel_ms"] * 1e3
    lines = [f"{name}: kernel time {result['kernel_ms']:.3f} ms/step, wall {result['wall_ms']:.3f} ms/step",
             f"  {'category':<14}{'ms/step':>10}{'share':>8}{'launches':>10}{'ms/layer':>10}  largest kernel"]
    for cat, (us, launches, (_, top)) in cats:
        share = us / total_us if total_us else 0.0
        lines.append(f"  {cat:<14}{us / 1e3:>10.3f}{share:>8.1%}{launches:>10.0f}{us / 1e3 / layers:>10.4f}  "
                     f"{top[:60]}")
    return lines


def build_steps(model, twin, impls: Sequence[str], pixels: torch.Tensor, train: bool) -> dict[str, Callable]:
    """One step per implementation on the vision tower: inference (inference_mode) or forward + backward."""
    from siglip_fast.cli import graphed_forward, pooled

    def plain(module, backend=None):
        def step():
            if backend is not None:
                model.set_backend(backend)
            with torch.enable_grad() if train else torch.inference_mode():
                out = pooled(module(pixel_values=pixels))
                if train:
                    out.backward(torch.ones_like(out))
                    module.zero_grad(set_to_none=True)
            return out
        return step

    steps = {}
    for impl in impls:
        if impl in ("triton", "sdpa", "eager"):
            steps[impl] = plain(model.vision_model, impl)
        elif impl == "triton-graph":
            if train:
                raise ValueError("triton-graph is an inference path; drop it with --train")
            run = graphed_forward(model, "vision", pixels, None)
            steps[impl] = lambda run=run: run().pooler_output
        elif impl.startswith("transformers-sdpa"):
            if twin is None:
                raise ValueError(f"{impl} needs transformers installed")
            module = twin.vision_model
            steps[impl] = plain(torch.compile(module, dynamic=False) if impl.endswith("+compile") else module)
        else:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks._common import TINY
    from siglip_fast.cli import CLIError, pick_device, pick_dtype, random_model, transformers_twin
    from siglip_fast.configuration import SiglipConfig
    from siglip_fast.variants import VARIANTS, config_for

    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_model", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="so400m-patch14-384",
                        help=f"a named shape ({', '.join(VARIANTS)}) or 'tiny' (2 layers, hidden 64)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--impl", action="append", choices=IMPLS, help="repeatable; default triton and sdpa")
    parser.add_argument("--train", action="store_true", help="profile forward + backward of the vision tower")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default bf16 on CUDA, fp32 on CPU")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
    except CLIError as e:
        parser.error(str(e))
    impls = args.impl or ["triton", "sdpa"]
    if args.variant == "tiny":
        config = SiglipConfig(**TINY)
    else:
        config = config_for(args.variant)
    torch.manual_seed(0)
    model = random_model(config, device, dtype)
    twin = None
    if any(i.startswith("transformers") for i in impls):
        twin = transformers_twin(model, "sdpa")
        if twin is None:
            parser.error("--impl transformers-*: transformers is not installed")
    vc = config.vision_config
    pixels = torch.randn(args.batch, vc.num_channels, vc.image_size, vc.image_size, device=device, dtype=dtype)
    print(f"# {args.variant} vision tower, batch {args.batch}, {str(dtype).removeprefix('torch.')}, "
          f"{'training step' if args.train else 'inference'}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}")
    try:
        steps = build_steps(model, twin, impls, pixels, args.train)
    except ValueError as e:
        parser.error(str(e))
    failed = []
    for name, step in steps.items():
        try:
            result = profile_step(step, device, args.steps)
        except Exception as e:  # one failing implementation is reported; the others still run, the exit status is 1
            print(f"{name}: failed: {type(e).__name__}: {e}")
            failed.append(name)
            continue
        print("\n".join(format_profile(name, result, vc.num_hidden_layers)))
    if failed:
        print(f"error: {len(failed)} implementation(s) could not be profiled: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
