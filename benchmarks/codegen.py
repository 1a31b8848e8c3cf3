"""Hopper code-generation report and gate: compile every Triton kernel variant siglip_fast launches, without a GPU.

    python -m benchmarks.codegen [--arch 90] [--targets b16,so400m,text,loss] [--fp16 so400m|all|none]
                                 [--kernels attention_fwd,...] [--jobs 2] [--json PATH] [--quiet] [--strict]
    python -m benchmarks.codegen --report A.json [B.json ...]   # merge and re-report saved runs, compile nothing
    python -m benchmarks.codegen --selftest                      # the probe kernel: aligned vs unaligned rows

GPU time is scarce, so what the kernels compile to on the H100/H200 is read here, on CPU: every variant is compiled
for sm_90 with the installed triton (its ptxas), and its cubin is read with the `cuobjdump` triton ships. Per variant
(kernel, constexprs / autotune config, dtype, target shape) the report gives registers, spill stores / loads (STL /
LDL in the SASS), local memory, shared memory, warpgroup MMA (`HGMMA`) vs `mma.sync` (`HMMA`), 16-byte async copies
(`LDGSTS*.128`), TMA loads (`UTMALDG`) and scalar 16-bit global loads / stores (`LDG.E.U16`/`S16`, `STG.E.U16`: the
sign that triton could not prove 16-byte alignment and gave up vectorising a bf16/fp16 tile). It exits non-zero when
a variant fails to compile (the old compile_check's job); the gate invariants (tests/test_codegen.py) are computed
here too and printed at the end (`--strict`: also exit non-zero when one fails).

Which variants: one training step (forward and backward) at the target shapes, through the model and the public
loss on the triton backend, with the GPU launchers' own choices (the kernel modules' `_INTERPRET` stays False; only
`_CPU_OK` is set so CPU tensors pass the device checks):
  b16     SiglipVisionModel B/16-224 (head dim 64, 196 tokens, MLP 3072, MAP head: 1-query attention), uint8 pixels
  so400m  SiglipVisionModel So400m/14-384 (head dim 72, 729 tokens, MLP 4304, patch 14, MAP head), uint8 pixels
  text    SiglipTextModel base, 64 tokens, with a padding mask
  loss    sigmoid_loss(backend="triton") at N = 32768, D = 1152
Each tower has one encoder layer (the layers are identical launches). Every autotuner compiles all its configs that
survive its pruning at that shape (that is what autotuning launches on the GPU), every other kernel its one launch.

Batch sizes. Compile-time choices can depend on the batch in three ways: (1) triton specialises integer arguments
(== 1, divisible by 16) and pointer alignment; (2) autotune keys and prune functions (the linear and patch-embedding
keys hold M rounded up to a power of two; attention prunes by Nq); (3) launcher tile choices (the loss tiles depend on
M and N: 64 when <= 64, else 128; the loss slabs rows on N and the dtype). To keep them exact this tool does not
reduce the batch at all: it runs the real batch (512, 128, 1024 x 64 tokens, N = 32768) under a torch dispatch mode
that replaces every torch computation on a large tensor by an uninitialised tensor of the right shape and strides
(values are garbage anyway: kernels are compiled, never launched), so the CPU never does the GEMMs of the real
batch, and any future batch-dependent key (say a batch x heads bucket) is compiled as the GPU would see it. What
remains device- rather than batch-dependent: launchers that size their grid from the SM count on CUDA (layer_norm
backward's rows per program, patch_embed's dW split) take their CPU branch here, which only changes a runtime integer
(at most its divisible-by-16 specialisation, never a constexpr); and linear's gemm="auto" times the Triton GEMM
against torch's on CUDA, while here the Triton candidate is always compiled (the one autotuning would launch).

fp16 (`--fp16`, default `so400m`): bf16 and fp16 take the same launch choices (the launchers branch only on
fp32 vs not) and the same instructions (HGMMA/HMMA .BF16 vs .F16, same widths and alignment), so fp16 is compiled at
one shape, the hardest one (head dim 72), as a check of that claim; `--fp16 all` compiles it everywhere.

This redirects triton's runtime in this process only; a developer check, not part of the library. Compiles run in
`--jobs` processes (one per target group); triton's on-disk cache makes reruns fast.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time

SHARED_LIMIT = {80: 232448 - 65536, 86: 101376, 89: 101376, 90: 232448, 100: 232448}  # max dynamic smem per block
TARGETS = ("b16", "so400m", "text", "loss")
TARGET_LABELS = {
    "b16": "B/16-224 b512", "so400m": "So400m/14-384 b128", "text": "text-base b1024x64 mask",
    "loss": "loss N32768 D1152",
}
# the cost of each target cold (rough, for splitting them across --jobs processes)
_COST = {("so400m", "bf16"): 5, ("b16", "bf16"): 4, ("text", "bf16"): 3, ("loss", "bf16"): 1,
         ("so400m", "fp16"): 5, ("b16", "fp16"): 4, ("text", "fp16"): 3, ("loss", "fp16"): 1}


# --------------------------------------------------------------------------------------------------------------------
# SASS and resource-usage parsing (pure functions: the tests feed them known snippets)
# --------------------------------------------------------------------------------------------------------------------
_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")
SASS_COUNTS = ("hgmma", "hmma", "ldgsts128", "ldgsts_narrow", "utmaldg", "ldg16", "stg16", "stl", "ldl")


def sass_opcodes(sass: str) -> list[str]:
    """The opcodes (with modifiers, e.g. `LDG.E.U16.CONSTANT`) of every instruction in `cuobjdump -sass` text."""
    return _OPCODE.findall(sass)


def classify(opcode: str) -> str | None:
    """Which SASS_COUNTS bucket an opcode falls in (None: not one we count)."""
    parts = opcode.split(".")
    op, mods = parts[0], set(parts[1:])
    if op == "HGMMA":
        return "hgmma"
    if op == "HMMA":
        return "hmma"
    if op == "LDGSTS":
        return "ldgsts128" if "128" in mods else "ldgsts_narrow"
    if op.startswith("UTMALDG"):
        return "utmaldg"
    if op == "LDG" and mods & {"U16", "S16"}:
        return "ldg16"
    if op == "STG" and mods & {"U16", "S16"}:
        return "stg16"
    if op == "STL":
        return "stl"
    if op == "LDL":
        return "ldl"
    return None


def analyze_sass(sass: str) -> dict[str, int]:
    """Counts per SASS_COUNTS bucket, plus `instructions` (all of them)."""
    counts = dict.fromkeys(SASS_COUNTS, 0)
    ops = sass_opcodes(sass)
    for op in ops:
        kind = classify(op)
        if kind:
            counts[kind] += 1
    counts["instructions"] = len(ops)
    return counts


_TT_LOAD = re.compile(r"tt\.load\b[^\n]*?:\s*(tensor<((?:\d+x)+)!tt\.ptr<(\w+)>|!tt\.ptr<(\w+)>)")


def analyze_ttgir(ttgir: str) -> dict[str, int]:
    """What the kernel's `tt.load`s read (from its TTGIR): `vector16_loads`, loads of 16-bit floats whose operand is
    a vector or a scalar (a bias, a position row, a statistic: one element per thread at most, so each may lower to
    one 16-bit access, outside any tile loop), and `byte_loads`, loads of 8-bit integers (uint8 pixels: two of them
    travel in one 16-bit access when the pixel rows are only 2-byte aligned)."""
    out = {"vector16_loads": 0, "byte_loads": 0}
    for m in _TT_LOAD.finditer(ttgir):
        dims, elem = (m.group(2) or ""), (m.group(3) or m.group(4))
        rank = dims.count("x")
        if elem in ("bf16", "f16") and rank <= 1:
            out["vector16_loads"] += 1
        elif elem in ("i8", "ui8"):
            out["byte_loads"] += 1
    return out


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def parse_res_usage(text: str) -> dict[str, int]:
    """`cuobjdump -res-usage`: registers, stack and local bytes per thread, static shared bytes (first function)."""
    m = _RES.search(text)
    if not m:
        raise ValueError(f"no resource usage line in: {text[:200]!r}")
    reg, stack, shared, local = map(int, m.groups())
    return {"regs": reg, "stack": stack, "static_shared": shared, "local": local}


def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"triton ships no cuobjdump at {path}")
    return path


def read_cubin(cubin: bytes) -> dict:
    """Resource usage and SASS counts of one cubin, with triton's cuobjdump."""
    tool = _cuobjdump()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout  # the resource usage, then the SASS
    out = parse_res_usage(text)
    out.update(analyze_sass(text))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Compile-only runtime: the driver reports the target, JITFunction.run compiles (warmup), autotuners compile every
# surviving config, and large torch computations are skipped
# --------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _State:
    label: tuple = ("", "")  # (target, dtype) being run
    config: tuple | None = None  # the autotune config being compiled (its description), if any
    kernels: set | None = None  # compile only these kernel short names (None: all)
    seen: dict = dataclasses.field(default_factory=dict)  # (target, dtype, kernel, key) -> record
    hashes: dict = dataclasses.field(default_factory=dict)  # compiled hash -> cubin analysis
    autotune: dict = dataclasses.field(default_factory=dict)  # kernel -> {"configs": [...], "kept": {label: [...]}}
    errors: list = dataclasses.field(default_factory=list)
    compile_s: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(float))


def short_name(fn_name: str) -> str:
    """`_attention_fwd_kernel` -> `attention_fwd`."""
    return fn_name.strip("_").removesuffix("_kernel")


def _config_desc(config) -> str:
    """An autotune config as a canonical string, e.g. `BLOCK_M=128 BLOCK_N=64 num_stages=3 num_warps=8`."""
    kw = dict(config.kwargs)
    kw["num_warps"] = config.num_warps
    kw["num_stages"] = config.num_stages
    return " ".join(f"{k}={v}" for k, v in sorted(kw.items()))


def _specialization(fn, args) -> dict:
    """What triton specialises the runtime arguments on: integers equal to 1, integers and pointers not divisible by
    16 (their alignment is then unknown to the compiler)."""
    one, not16 = [], []
    for param, x in zip(fn.params, args, strict=False):
        name = param.name
        if param.is_constexpr or getattr(param, "do_not_specialize", False) or isinstance(x, bool):
            continue
        if isinstance(x, int):
            if x == 1:
                one.append(name)
            elif x % 16:
                not16.append(f"{name}={x}")
        elif hasattr(x, "data_ptr") and x.data_ptr() % 16:
            not16.append(f"{name}@{x.data_ptr() % 16}")
    return {"one": one, "not16": not16}


def _install(arch: int, state: _State) -> None:
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    class CompileOnlyDriver:
        """What JITFunction.run asks of the driver before compiling; nothing is launched."""

        def get_current_target(self):
            return GPUTarget("cuda", arch, 64 if arch < 100 else 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def set_current_device(self, device):
            pass

    jit_run = JITFunction.run

    def compile_only_run(self, *a, grid, warmup, **kwargs):
        name = short_name(self.fn.__name__)
        if state.kernels is not None and name not in state.kernels:
            return None
        key = tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, (bool, int, str, float))))
        c0 = _cpu_seconds()
        try:
            kernel = jit_run(self, *a, grid=grid, warmup=True, **kwargs)
        except Exception as e:  # noqa: BLE001  (every compile error is reported, then the tool fails)
            state.errors.append(f"{name} {dict(key)} at {'/'.join(state.label)}: {type(e).__name__}: {e}")
            return None
        meta = kernel.metadata
        h = meta.hash
        ident = (*state.label, name, h)
        if ident in state.seen:
            return kernel
        if h not in state.hashes:
            state.hashes[h] = {**read_cubin(kernel.asm["cubin"]), **analyze_ttgir(kernel.asm.get("ttgir", ""))}
            state.hashes[h]["cpu_s"] = round(_cpu_seconds() - c0, 2)  # compile (or cache read) + SASS read
            state.compile_s[name] += state.hashes[h]["cpu_s"]
        state.seen[ident] = dict(
            kernel=name, target=state.label[0], dtype=state.label[1], key=dict(key), spec=_specialization(self, a),
            config=state.config, shared=int(meta.shared), hash=h, num_warps=int(meta.num_warps),
            num_stages=int(meta.num_stages), **state.hashes[h])
        return kernel

    def compile_every_config(self, *a, **kwargs):
        name = short_name(self.fn.__name__ if hasattr(self.fn, "__name__") else self.base_fn.__name__)
        self.nargs = dict(zip(self.arg_names, a, strict=False))
        configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
        entry = state.autotune.setdefault(name, {"configs": [_config_desc(c) for c in self.configs], "kept": {}})
        kept = entry["kept"].setdefault("/".join(state.label), [])
        kept += [d for d in map(_config_desc, configs) if d not in kept]
        for config in configs:
            state.config = _config_desc(config)
            try:
                self.fn.run(*a, **kwargs, **config.all_kwargs())
            finally:
                state.config = None
        self.nargs = None

    driver.set_active(CompileOnlyDriver())
    JITFunction.run = compile_only_run
    Autotuner.run = compile_every_config


def _cheap_torch_mode(threshold: int = 1 << 18):
    """A torch dispatch mode that skips the computation of every torch op touching a tensor of more than
    `threshold` elements: the result is an uninitialised tensor of the shape and strides torch's meta kernel gives
    (in-place ops return their target unchanged). Views and small ops run for real; siglip_fast's custom ops run
    their Python implementation under the mode (their launchers compile kernels through the hooks above)."""
    import torch
    from torch._library.custom_ops import OPDEFS
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten, tree_map

    def big(x) -> bool:
        return isinstance(x, torch.Tensor) and x.numel() > threshold

    def to_meta(x):
        return x.to("meta") if isinstance(x, torch.Tensor) else x

    def from_meta(x):
        if isinstance(x, torch.Tensor) and x.device.type == "meta":
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cpu")
        return x

    class CheapTorch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace == "siglip_fast":
                opdef = OPDEFS.get(func._schema.name)
                if opdef is not None:
                    with self:
                        return opdef._init_fn(*args, **kwargs)
                return func(*args, **kwargs)
            flat, _ = tree_flatten((args, kwargs))
            if not any(big(x) for x in flat):
                return func(*args, **kwargs)
            schema = func._schema
            if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
                return func(*args, **kwargs)  # a view: cheap, and must alias for real
            if schema.is_mutable:  # in place / out=: leave the target as it is
                written = [a for a, arg in zip(args, schema.arguments, strict=False)
                           if arg.alias_info is not None and arg.alias_info.is_write]
                written += [kwargs[arg.name] for arg in schema.arguments
                            if arg.alias_info is not None and arg.alias_info.is_write and arg.name in kwargs]
                if written and len(schema.returns) == 1:
                    return written[0]
                if written and len(schema.returns) == len(written):
                    return tuple(written)
                return func(*args, **kwargs)
            try:
                out = func(*tree_map(to_meta, args), **tree_map(to_meta, kwargs))
            except Exception:  # noqa: BLE001  (no meta kernel, or data-dependent: compute it)
                return func(*args, **kwargs)
            return tree_map(from_meta, out)

    return CheapTorch()


# --------------------------------------------------------------------------------------------------------------------
# The targets
# --------------------------------------------------------------------------------------------------------------------
_VISION = {"b16": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, patch_size=16, image_size=224,
                       batch=512),
           "so400m": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, patch_size=14,
                          image_size=384, batch=128)}
_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, max_position_embeddings=64,
             vocab_size=1000, batch=1024)
_LOSS = dict(n=32768, d=1152)


def _run_target(target: str, dtype) -> None:
    import torch

    import siglip_fast

    if target in _VISION:
        cfg = dict(_VISION[target])
        batch = cfg.pop("batch")
        config = siglip_fast.SiglipVisionConfig(num_hidden_layers=1, **cfg)
        model = siglip_fast.SiglipVisionModel(config, backend="triton").to(dtype).train()
        pixels = torch.randint(0, 256, (batch, 3, cfg["image_size"], cfg["image_size"]), dtype=torch.uint8)
        with _cheap_torch_mode():
            out = model(pixel_values=pixels)
            (out.pooler_output.float().sum() + out.last_hidden_state.float().sum()).backward()
            with torch.no_grad():  # normalised float pixels: the patch embedding's other input path
                model(pixel_values=torch.empty(pixels.shape, dtype=dtype))
    elif target == "text":
        cfg = dict(_TEXT)
        batch = cfg.pop("batch")
        config = siglip_fast.SiglipTextConfig(num_hidden_layers=1, projection_size=cfg["hidden_size"], **cfg)
        model = siglip_fast.SiglipTextModel(config, backend="triton").to(dtype).train()
        n = cfg["max_position_embeddings"]
        ids = torch.randint(0, cfg["vocab_size"], (batch, n))
        mask = torch.ones(batch, n, dtype=torch.long)
        mask[:, n // 2:] = torch.rand(batch, n - n // 2).lt(0.5)  # padded rows
        with _cheap_torch_mode():
            out = model(input_ids=ids, attention_mask=mask)
            (out.pooler_output.float().sum() + out.last_hidden_state.float().sum()).backward()
    elif target == "loss":
        x = torch.empty(_LOSS["n"], _LOSS["d"], dtype=dtype).requires_grad_()
        y = torch.empty(_LOSS["n"], _LOSS["d"], dtype=dtype).requires_grad_()
        t = torch.tensor(2.3, requires_grad=True)
        b = torch.tensor(-10.0, requires_grad=True)
        from siglip_fast.kernels.sigmoid_loss import _block_backward

        with _cheap_torch_mode():
            siglip_fast.sigmoid_loss(x, y, t, b, backend="triton").backward()  # the training path
            with torch.no_grad():  # evaluation: the forward-only tile pass
                siglip_fast.sigmoid_loss(x, y, t, b, backend="triton")
                # the distributed ring's per-block backward (recomputes the logits of a block)
                scalar = torch.tensor([0.5])
                _block_backward(x, y, scalar, scalar, scalar, 0, "triton", None, torch.empty_like(x),
                                torch.empty(y.shape, dtype=torch.float32), accumulate_dx=False)
    else:
        raise ValueError(f"unknown target {target!r}")


def run_jobs(jobs: list[tuple[str, str]], arch: int, kernels: set | None) -> dict:
    """Compile every variant of the given (target, dtype) jobs in this process; the raw result as a dict."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the kernels must be JIT functions, not interpreted ones")
    import importlib

    import torch
    import triton

    state = _State(kernels=kernels)
    _install(arch, state)
    for name in ("attention", "layer_norm", "linear", "patch_embed", "sigmoid_loss"):
        module = importlib.import_module(f"siglip_fast.kernels.{name}")
        if getattr(module, "_INTERPRET", False):
            raise RuntimeError(f"siglip_fast.kernels.{name}._INTERPRET is set: the interpreter's configs would be "
                               "compiled instead of the GPU launchers' own")
        module._CPU_OK = True  # only the device check of the launchers: CPU tensors pass
    os.environ["TRITON_INTERPRET"] = "1"  # siglip_fast.ops' call-time check; the kernels stay compiled JIT functions
    timings, cpu = {}, {}
    for target, dt in jobs:
        state.label = (target, dt)
        t0 = time.perf_counter()
        c0 = _cpu_seconds()
        try:
            _run_target(target, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt])
        except Exception as e:  # noqa: BLE001
            state.errors.append(f"{target}/{dt}: {type(e).__name__}: {e}")
        timings[f"{target}/{dt}"] = round(time.perf_counter() - t0, 1)
        cpu[f"{target}/{dt}"] = round(_cpu_seconds() - c0, 1)
    return {
        "triton": triton.__version__, "torch": torch.__version__, "arch": arch,
        "variants": list(state.seen.values()),
        "autotune": state.autotune,
        "errors": state.errors, "job_seconds": timings, "job_cpu_seconds": cpu,
        "compile_seconds": dict(state.compile_s), "process_cpu_seconds": round(_cpu_seconds(), 1),
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas, cuobjdump): the cost on an idle machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def selftest(arch: int) -> dict:
    """Compile a probe kernel that copies a (64, 64) bf16 tile through a row stride of 64 (16-byte aligned rows) and
    of 72 (head dim 72's stride between heads: alignment unknown to triton): the SASS analysis of each."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1")
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def codegen_probe(X, Y, stride_x, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :])
        tl.store(Y + rows[:, None] * BLOCK_D + cols[None, :], x)

    state = _State()
    _install(arch, state)
    out = {}
    for stride in (64, 72):
        state.label = (f"stride{stride}", "bf16")
        x = torch.empty(64 * stride, dtype=torch.bfloat16)
        y = torch.empty(64 * 64, dtype=torch.bfloat16)
        codegen_probe[(1,)](x, y, stride, BLOCK_M=64, BLOCK_D=64, num_warps=4)
    for v in state.seen.values():
        out[v["target"]] = v
    out["errors"] = state.errors
    return out


def _merge(parts: list[dict]) -> dict:
    out = {k: parts[0][k] for k in ("triton", "torch", "arch")}
    out["variants"] = [v for p in parts for v in p["variants"]]
    out["errors"] = [e for p in parts for e in p["errors"]]
    out["job_seconds"] = {k: v for p in parts for k, v in p["job_seconds"].items()}
    out["job_cpu_seconds"] = {k: v for p in parts for k, v in p.get("job_cpu_seconds", {}).items()}
    out["process_cpu_seconds"] = []
    for p in parts:
        pcs = p.get("process_cpu_seconds", [])
        out["process_cpu_seconds"] += pcs if isinstance(pcs, list) else [pcs]
    out["compile_seconds"] = collections.Counter()
    for p in parts:
        out["compile_seconds"].update(p["compile_seconds"])
    out["compile_seconds"] = {k: round(v, 1) for k, v in out["compile_seconds"].items()}
    autotune: dict = {}
    for p in parts:
        for k, v in p["autotune"].items():
            e = autotune.setdefault(k, {"configs": v["configs"], "kept": {}})
            for lab, cs in v["kept"].items():
                e["kept"].setdefault(lab, [])
                e["kept"][lab] += [c for c in cs if c not in e["kept"][lab]]
    out["autotune"] = autotune
    return out


# --------------------------------------------------------------------------------------------------------------------
# The gate's invariants (tests/test_codegen.py asserts each on the JSON; the tool prints them)
# --------------------------------------------------------------------------------------------------------------------
LOW_PRECISION = ("bf16", "fp16")


def mma_rows(v: dict) -> int | None:
    """Rows of the kernel's MMA tiles (every tl.dot of the kernel has at least this M), None: no dot / not known.

    attention_fwd, attention_bwd_q: BLOCK_M (q rows: S = Q K^T, O += P V, dP = dO V^T, dQ += dS K);
    attention_bwd_kv: BLOCK_N (key rows: S^T = K Q^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q);
    linear_fwd, patch_embed_fwd, sigmoid_loss_*: BLOCK_M (the output tile rows);
    patch_embed_bwd_input: BLOCK_M (dX = dOut W); patch_embed_bwd_weight: BLOCK_D (dW = dOut^T X)."""
    k, key = v["kernel"], v["key"]
    if k in ("attention_fwd", "attention_bwd_q", "linear_fwd", "patch_embed_fwd", "patch_embed_bwd_input",
             "sigmoid_loss_fwd", "sigmoid_loss_bwd"):
        return key.get("BLOCK_M")
    if k == "attention_bwd_kv":
        return key.get("BLOCK_N")
    if k == "patch_embed_bwd_weight":
        return key.get("BLOCK_D")
    return None


def scalar_16bit_tile_access(v: dict) -> bool:
    """Invariant (a): a bf16/fp16 variant reads or writes a tile 16 bits at a time. SASS does not say what a load
    reads, so two kinds of 16-bit loads are told apart through the TTGIR: a vector operand (a bias, one element per
    thread) may take one 16-bit load each (`vector16_loads`); in a kernel that loads uint8 tiles (`byte_loads`, raw
    pixels) a 16-bit load is two pixels of a 2-byte aligned row, not a scalar, and its weight loads are checked on
    the float-pixel twin of the same config (the vision targets compile both). Every 16-bit store counts."""
    if v["dtype"] not in LOW_PRECISION:
        return False
    if v["stg16"]:
        return True
    if v.get("byte_loads"):
        return False
    return v["ldg16"] > v.get("vector16_loads", 0)


def wants_wgmma(v: dict) -> bool:
    """Invariant (b)'s scope: bf16/fp16, an MMA tile of >= 64 rows and a multiple of 4 warps (a warpgroup)."""
    rows = mma_rows(v)
    return v["dtype"] in LOW_PRECISION and rows is not None and rows >= 64 and v["num_warps"] % 4 == 0


def spills(v: dict) -> int:
    return v["stl"] + v["ldl"]


def config_of(v: dict) -> str:
    """The variant's constexprs and launch settings, compactly."""
    skip = {"HEAD_DIM", "DOT_PRECISION", "PRECISION", "IEEE", "num_ctas"}
    key = {k: val for k, val in v["key"].items() if k not in skip}
    abbrev = {"num_warps": "w", "num_stages": "s", "BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K", "BLOCK_D": "D",
              "BLOCK_D0": "D0", "BLOCK_D1": "D1", "GROUP_M": "G"}
    parts = [f"{name}=1" for name in v.get("spec", {}).get("one", []) if not name.startswith("stride")]
    for k, val in sorted(key.items(), key=lambda kv: (kv[0] not in abbrev, kv[0])):
        if isinstance(val, bool):
            if val:
                parts.append(k)
        else:
            parts.append(f"{abbrev.get(k, k)}{val}")
    return " ".join(parts)


def check_invariants(result: dict) -> dict[str, list[str]]:
    """Each invariant's failures (empty list: it holds)."""
    limit = SHARED_LIMIT[result["arch"]]
    variants = result["variants"]
    fails: dict[str, list[str]] = {"compile": list(result["errors"]), "a_no_scalar_16bit": [], "b_wgmma": [],
                                   "c_spill_free_fits": [], "d_no_dead_config": []}
    for v in variants:
        where = f"{v['kernel']} {v['target']}/{v['dtype']} [{config_of(v)}]"
        if scalar_16bit_tile_access(v):
            fails["a_no_scalar_16bit"].append(f"{where}: {v['ldg16']} LDG.E.U16/S16 (vector operands: "
                                              f"{v.get('vector16_loads', 0)}), {v['stg16']} STG.E.U16")
        if wants_wgmma(v) and not v["hgmma"]:
            fails["b_wgmma"].append(f"{where}: no HGMMA ({v['hmma']} HMMA), {mma_rows(v)}-row MMA tile, "
                                    f"{v['num_warps']} warps")
    groups = collections.defaultdict(list)
    for v in variants:
        groups[(v["kernel"], v["target"], v["dtype"])].append(v)
    for (k, t, d), vs in sorted(groups.items()):
        if not any(spills(v) == 0 and v["shared"] <= limit for v in vs):
            fails["c_spill_free_fits"].append(f"{k} {t}/{d}: none of {len(vs)} variants is spill-free and within "
                                              f"{limit // 1024} KiB shared")
    for k, entry in sorted(result["autotune"].items()):
        if result.get("kernels") and k not in result["kernels"]:
            continue  # --kernels: not compiled in this run
        launchable = {v["config"] for v in variants if v["kernel"] == k and v["shared"] <= limit}
        for c in entry["configs"]:
            if c in launchable:
                continue
            kept = any(c in cs for cs in entry["kept"].values())
            why = "over the shared-memory limit wherever it survives pruning" if kept else \
                "pruned at every target shape"
            fails["d_no_dead_config"].append(f"{k} config {c}: {why}")
    return fails


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------
def format_report(result: dict, fails: dict[str, list[str]]) -> str:
    limit = SHARED_LIMIT[result["arch"]]
    lines = [f"triton {result['triton']}, torch {result['torch']}, target sm_{result['arch']}, "
             f"{len(result['variants'])} variants (shared limit {limit / 1024:.0f} KiB)", ""]
    head = (f"{'kernel':<22} {'target':<7} {'dt':<4} {'config':<62} {'reg':>3} {'spill':>7} {'smem':>6} "
            f"{'HGMMA':>5} {'HMMA':>4} {'cp16B':>5} {'cp<16':>5} {'TMA':>3} {'LDG16':>5} {'STG16':>5}  flags")
    lines += [head, "-" * len(head)]
    order = {t: i for i, t in enumerate(TARGETS)}
    for v in sorted(result["variants"], key=lambda v: (v["kernel"], order.get(v["target"], 9), v["dtype"],
                                                        config_of(v))):
        flags = []
        if v["dtype"] in LOW_PRECISION and (v["ldg16"] or v["stg16"]):
            flags.append("a:16bit")
        if wants_wgmma(v) and not v["hgmma"]:
            flags.append("b:no-wgmma")
        if v["shared"] > limit:
            flags.append("over-smem")
        if spills(v):
            flags.append("spills")
        lines.append(
            f"{v['kernel']:<22} {v['target']:<7} {v['dtype']:<4} {config_of(v)[:62]:<62} {v['regs']:>3} "
            f"{v['stl']:>3}/{v['ldl']:<3} {v['shared'] / 1024:>5.1f}K {v['hgmma']:>5} {v['hmma']:>4} "
            f"{v['ldgsts128']:>5} {v['ldgsts_narrow']:>5} {v['utmaldg']:>3} {v['ldg16']:>5} {v['stg16']:>5}  "
            f"{','.join(flags)}")
    lines += ["", "columns: reg = registers/thread; spill = STL/LDL instructions; smem = shared memory per block;",
              "cp16B / cp<16 = LDGSTS .128 / narrower async copies; LDG16/STG16 = scalar 16-bit global loads/stores;",
              "config: constexprs and launch settings (w = warps, s = stages), `X=1`: argument X specialised to 1", ""]
    lines.append("per kernel: variants compiled (compile + SASS CPU seconds; cold only with an empty triton cache)")
    counts = collections.Counter(v["kernel"] for v in result["variants"])
    per_target = collections.defaultdict(collections.Counter)
    for v in result["variants"]:
        per_target[v["kernel"]][f"{v['target']}/{v['dtype']}"] += 1
    for k in sorted(counts):
        detail = ", ".join(f"{lab} {n}" for lab, n in sorted(per_target[k].items()))
        lines.append(f"  {k:<24}{counts[k]:>4}  ({result['compile_seconds'].get(k, 0.0):6.1f} s CPU)  {detail}")
    lines.append("per job, wall seconds: " + ", ".join(f"{k} {v}" for k, v in result["job_seconds"].items()))
    lines.append("per job, CPU seconds: " + ", ".join(f"{k} {v}" for k, v in result["job_cpu_seconds"].items())
                 + f"; per process (with imports): {result['process_cpu_seconds']}")
    lines.append("")
    names = {"compile": "every variant compiles",
             "a_no_scalar_16bit": "(a) no scalar 16-bit global loads/stores in bf16/fp16 variants",
             "b_wgmma": "(b) HGMMA in every bf16/fp16 variant with a >= 64-row MMA tile and 4k warps",
             "c_spill_free_fits": "(c) each kernel, target and dtype has a spill-free config within shared memory",
             "d_no_dead_config": "(d) no autotune config that can never launch"}
    for key, name in names.items():
        f = fails[key]
        lines.append(f"{'PASS' if not f else 'FAIL'} {name}" + (f": {len(f)} failures" if f else ""))
        lines += [f"    {x}" for x in f[:40]]
        if len(f) > 40:
            lines.append(f"    ... and {len(f) - 40} more")
    return "\n".join(lines)


def _split(jobs: list[tuple[str, str]], n: int) -> list[list[tuple[str, str]]]:
    """Split the jobs over n processes by rough cost, keeping jobs that share kernels in one process (B/16 and the
    text tower share their widths, so their linear and layer-norm variants are the same compiles)."""
    family = {"b16": "base", "text": "base"}
    fams: dict[str, list] = {}
    for job in jobs:
        fams.setdefault(family.get(job[0], job[0]), []).append(job)
    bins: list[list] = [[] for _ in range(n)]
    load = [0] * n
    for fam in sorted(fams.values(), key=lambda f: -sum(_COST.get(j, 1) for j in f)):
        i = load.index(min(load))
        bins[i] += fam
        load[i] += sum(_COST.get(j, 1) for j in fam)
    return [b for b in bins if b]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codegen", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {TARGETS}")
    parser.add_argument("--fp16", default="so400m", help="targets also compiled in fp16: a list, 'all' or 'none'")
    parser.add_argument("--dtypes", default="bf16", help="dtypes compiled at every target (bf16, fp16, fp32)")
    parser.add_argument("--kernels", default=None, help="compile only these kernels (e.g. attention_fwd,linear_fwd)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--json", default=None, help="also write the full result as JSON to this path ('-': stdout)")
    parser.add_argument("--quiet", action="store_true", help="print only the per-kernel counts and the invariants")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an invariant fails, not only on errors")
    parser.add_argument("--selftest", action="store_true",
                        help="compile only a probe kernel with 16-byte aligned and unaligned rows; print its JSON")
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help="compile nothing: merge the JSON of earlier runs (e.g. one per target, or from another "
                             "machine) and print their report and invariants")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON job list -> JSON on stdout
    args = parser.parse_args(argv)
    if args.arch not in SHARED_LIMIT:
        parser.error(f"--arch must be one of {sorted(SHARED_LIMIT)}")
    kernels = set(args.kernels.split(",")) if args.kernels else None
    if args.worker:
        print(json.dumps(run_jobs([tuple(j) for j in json.loads(args.worker)], args.arch, kernels)))
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET=1: the kernels must be compiled, not interpreted")
    if args.selftest:
        print(json.dumps(selftest(args.arch)))
        return 0

    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r}; choose from {TARGETS}")
    fp16 = set(TARGETS) if args.fp16 == "all" else set() if args.fp16 == "none" else set(args.fp16.split(","))
    jobs = [(t, d) for t in targets for d in args.dtypes.split(",")]
    jobs += [(t, "fp16") for t in targets if t in fp16 and (t, "fp16") not in jobs]

    if args.report:
        parts = []
        for path in args.report:
            with open(path) as f:
                parts.append(json.load(f))
        result = _merge(parts)
        result["wall_seconds"] = sum(p.get("wall_seconds", 0) for p in parts)
        result["jobs"] = [j for p in parts for j in p.get("jobs", [])]
        result["kernels"] = None
        return _finish(result, args)

    t0 = time.perf_counter()
    groups = _split(jobs, max(1, args.jobs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = []
    for g in groups:
        cmd = [sys.executable, "-m", "benchmarks.codegen", "--arch", str(args.arch), "--worker", json.dumps(g)]
        if args.kernels:
            cmd += ["--kernels", args.kernels]
        procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True))
    parts = []
    failed = False
    for g, p in zip(groups, procs, strict=True):
        out, _ = p.communicate()
        if p.returncode != 0:
            print(f"worker for {g} exited with {p.returncode}", file=sys.stderr)
            failed = True
            continue
        parts.append(json.loads(out))
    if not parts:
        return 2
    result = _merge(parts)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["processes"] = len(groups)
    result["jobs"] = jobs
    result["kernels"] = sorted(kernels) if kernels else None
    return _finish(result, args, failed)


def _finish(result: dict, args, failed: bool = False) -> int:
    fails = check_invariants(result)
    result["invariants"] = fails
    text = format_report(result, fails)
    if args.quiet:
        text = text[text.index("per kernel:"):]
    print(text)
    print(f"wall time {result['wall_seconds']} s with {result.get('processes', '?')} process(es)")
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if failed or result["errors"]:
        return 1
    if args.strict and any(fails.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
