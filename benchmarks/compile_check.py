"""Compile every Triton kernel variant the fused model launches for a GPU architecture, without a GPU.

    python -m benchmarks.compile_check [--arch 90] [--widths so400m|base]

GPU time is scarce, so a kernel that does not compile for the target (an unsupported dot shape, a layout the
installed triton rejects, ...) should be found before it. This tool runs one training step of a one-layer-per-tower
model with SigLIP So400m's widths (head dim 72 split 64 + 16, MLP 4304, patch 14, 729 tokens) or B/16's (head dim
64, MLP 3072, patch 16, 196 tokens) on the triton backend in bf16 (uint8 pixels) and fp32, on CPU tensors, with
triton's runtime redirected to compile instead of launch: the active driver reports the chosen target, every
`JITFunction.run` is a warm-up (compile, no launch) and every autotuner compiles all its configs that survive
pruning. Outputs are never written, so values downstream are garbage; only compilation is checked. It prints per
kernel the variants compiled and the largest shared-memory footprint, and lists configs over the architecture's
per-block limit (the autotuner skips those at run time). It exits non-zero if any kernel fails to compile.

This redirects triton's runtime classes in this process only; it is a developer check, not part of the library.
Cold, it takes ~10 minutes on 2 cores (triton's on-disk cache makes reruns fast).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import sys

# hidden, MLP, heads, patch, image: the real widths and token counts (every query-block config survives pruning)
WIDTHS = {"so400m": (1152, 4304, 16, 14, 384), "base": (768, 3072, 12, 16, 224)}
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}  # max dynamic shared memory per block


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10, e.g. 90 (H100), 80 (A100)")
    parser.add_argument("--widths", choices=sorted(WIDTHS), default="so400m")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET=1: the kernels must be JIT functions, not interpreted ones")

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    class CompileOnlyDriver:
        """What JITFunction.run asks of the driver before compiling; nothing is launched."""

        def get_current_target(self):
            return GPUTarget("cuda", args.arch, 64 if args.arch < 100 else 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def set_current_device(self, device):
            pass

    compiled: dict[tuple, int] = {}
    jit_run = JITFunction.run

    def compile_only_run(self, *a, grid, warmup, **kwargs):
        kernel = jit_run(self, *a, grid=grid, warmup=True, **kwargs)
        key = tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, (bool, int, str))))
        compiled[(self.fn.__name__, key)] = kernel.metadata.shared
        return kernel

    def compile_every_config(self, *a, **kwargs):
        self.nargs = dict(zip(self.arg_names, a, strict=False))
        configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
        for config in configs:
            self.fn.run(*a, **kwargs, **config.all_kwargs())
        self.nargs = None

    driver.set_active(CompileOnlyDriver())
    JITFunction.run = compile_only_run
    Autotuner.run = compile_every_config

    import siglip_fast

    for name in ("attention", "layer_norm", "linear", "patch_embed", "sigmoid_loss"):  # CPU tensors pass the checks
        importlib.import_module(f"siglip_fast.kernels.{name}")._INTERPRET = True
    os.environ["TRITON_INTERPRET"] = "1"  # the call-time device checks; the kernels are already compiled JIT functions

    hidden, mlp, heads, patch, image = WIDTHS[args.widths]
    width = dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=1, num_attention_heads=heads)
    config = siglip_fast.SiglipConfig(
        text_config=dict(vocab_size=1000, max_position_embeddings=64, projection_size=hidden, **width),
        vision_config=dict(image_size=image, patch_size=patch, **width))
    for dtype in (torch.bfloat16, torch.float32):
        model = siglip_fast.SiglipModel(config, backend="triton").to(dtype).train()
        ids = torch.randint(0, 1000, (2, 64))
        pixels = torch.randint(0, 256, (2, 3, image, image), dtype=torch.uint8)
        mask = torch.ones(2, 64, dtype=torch.long)
        mask[0, 10:] = 0
        out = model(input_ids=ids, pixel_values=pixels if dtype == torch.bfloat16 else pixels.to(dtype),
                    attention_mask=mask, return_loss=True)
        out.loss.backward()
        print(f"{str(dtype).removeprefix('torch.')}: {len(compiled)} kernel variants compiled so far", flush=True)

    import triton

    limit = SHARED_LIMIT.get(args.arch)
    print(f"\ntriton {triton.__version__}, target sm_{args.arch}, {args.widths} widths: every variant compiled")
    counts = collections.Counter(name for name, _ in compiled)
    for name in sorted(counts):
        top = max(shared for (n, _), shared in compiled.items() if n == name)
        print(f"  {name:<34}{counts[name]:>4} variants, max shared {top / 1024:.1f} KiB")
    over = [(name, shared, dict(key)) for (name, key), shared in compiled.items() if limit and shared > limit]
    for name, shared, key in over:
        print(f"  over the {limit / 1024:.0f} KiB limit (skipped by the autotuner at run time): {name} "
              f"{shared / 1024:.1f} KiB {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
