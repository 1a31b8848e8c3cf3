"""triton and triton.language, or a stand-in where triton is not installed (macOS, Windows, CPU-only installs).

Every kernel module imports `triton` and `tl` from here, so that the module — its eager `*_reference`, which the
eager and sdpa backends run, and its torch custom ops — imports without triton. The stand-in only has to get the
module bodies through their definitions: `triton.jit` / `autotune` / `heuristics` decorate into a kernel that raises
`TritonUnavailableError` when launched, and `triton.Config` records its arguments. The backend switch
(`siglip_fast.ops`) never picks the kernels without triton, and asking for them explicitly (`backend="triton"`) is
refused there with a clear error before any launch.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # the stand-in below
    HAVE_TRITON = False


class TritonUnavailableError(RuntimeError):
    """A Triton kernel was launched where the triton package is not installed."""


if not HAVE_TRITON:
    import types

    class _Kernel:
        """What `@triton.jit` (and the autotune/heuristics decorators) make of a kernel without triton."""

        def __init__(self, fn):
            self.fn = getattr(fn, "fn", fn)

        def __getitem__(self, grid):
            return self.run

        def run(self, *args, **kwargs):
            raise TritonUnavailableError(
                f"the Triton kernel {self.fn.__name__} needs the triton package (Linux with a CUDA GPU, or its "
                "interpreter); it is not installed: use backend='eager' or 'sdpa', or install triton")

    def _jit(fn=None, **_options):
        return _Kernel(fn) if fn is not None else _Kernel

    class _Config:
        def __init__(self, kwargs, num_warps=4, num_stages=3, **options):
            self.kwargs, self.num_warps, self.num_stages, self.options = dict(kwargs), num_warps, num_stages, options

    triton = types.SimpleNamespace(
        jit=_jit,
        autotune=lambda *a, **k: _Kernel,
        heuristics=lambda *a, **k: _Kernel,
        Config=_Config,
        cdiv=lambda a, b: -(-a // b),
        next_power_of_2=lambda n: 1 if n <= 1 else 1 << (n - 1).bit_length(),
        __version__=None,
    )
    tl = types.SimpleNamespace(constexpr=object)

__all__ = ["HAVE_TRITON", "TritonUnavailableError", "tl", "triton"]
