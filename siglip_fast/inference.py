"""The inference fast path: one tower's forward at a fixed batch size, captured once in a CUDA graph and replayed.

At small batches a SigLIP forward is launch-bound: a B/16 tower is ~150 kernel launches whose Python and driver
overhead exceeds their GPU time. A CUDA graph records those launches once (static shapes, static buffers) and replays
them with one call. `InferenceRunner` owns the static input buffers, the graph and its memory pool; a call copies the
inputs in (any device, any batch size), replays once per `batch_size` rows (the last chunk padded) and copies the
outputs out. Built by `SiglipVisionModel.compile_for_inference` and `SiglipTextModel.compile_for_inference`.

Every row of a tower is computed independently of the other rows (per-image attention, per-token norms, a
per-image MAP head), so padding rows never change the real ones. The graph is captured against the parameters'
current storage: in-place weight updates (`load_state_dict`, an optimizer step) are seen by later replays; replacing
parameters (`.to(...)`, re-assigning modules) or `set_backend` after capture is not, so build a new runner then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .outputs import BaseModelOutputWithPooling

_KINDS = {
    "float": (lambda t: t.is_floating_point(), "a floating-point"),
    "uint8": (lambda t: t.dtype == torch.uint8, "a uint8"),
    "integer": (lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool, "an integer"),
    "mask": (lambda t: not t.is_floating_point() and not t.is_complex(), "an integer or bool"),
}


@dataclass(frozen=True)
class StaticInput:
    """One input of the captured forward: its per-row shape, the buffer dtype, the accepted dtype kind (see
    `_KINDS`; values are cast to `dtype` on copy) and the value of padding rows."""

    name: str
    row_shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str
    pad_value: float | int


class InferenceRunner:
    """A tower's forward at a static batch size, replayed from a CUDA graph (or run directly when `cuda_graph` is
    False, e.g. on CPU, with the same chunking and padding).

    Call it with the tower's inputs as keywords; it returns a `BaseModelOutputWithPooling` with `pooler_output` and,
    when built with `keep_last_hidden_state=True` (or when the tower has no pooled output), `last_hidden_state`.
    Outputs are fresh tensors on the model's device, never views of the graph's static buffers.
    """

    def __init__(
        self,
        run: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]],
        inputs: list[StaticInput],
        batch_size: int,
        device: torch.device,
        *,
        keep_last_hidden_state: bool,
        cuda_graph: bool | None,
        warmup: int,
        optional: tuple[str, ...] = (),
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (autotuning and first-call work happen outside the graph), "
                             f"got {warmup!r}")
        if cuda_graph is None:
            cuda_graph = device.type == "cuda"
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, got {device}; "
                             "use cuda_graph=False (or None) to run the static-batch forward without a graph")
        self.batch_size = batch_size
        self.device = device
        self.cuda_graph = bool(cuda_graph)
        self.keep_last_hidden_state = keep_last_hidden_state
        self._run = run
        self._inputs = {spec.name: spec for spec in inputs}
        self._optional = optional
        with torch.inference_mode(False):  # ordinary tensors even when built under inference_mode: calls write them
            self._buffers = {  # (batch_size, *row_shape) each, filled with padding until the first call
                s.name: torch.full((batch_size, *s.row_shape), s.pad_value, dtype=s.dtype, device=device)
                for s in inputs
            }
        self._graph = None
        with torch.inference_mode():
            if self.cuda_graph:
                self._static = self._capture(warmup)
            else:
                for _ in range(warmup):  # the same first-call errors and autotuning as the graph path
                    self._static = self._run(self._buffers)

    def _capture(self, warmup: int):
        """Warm up on a side stream (Triton compilation and autotuning cannot be captured), then record one forward."""
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    self._run(self._buffers)
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                static = self._run(self._buffers)
            torch.cuda.synchronize()
        return static

    def _check(self, name: str, value, n_rows: int | None) -> int:
        spec = self._inputs[name]
        ok, what = _KINDS[spec.kind]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not ok(value):
            raise TypeError(f"{name} must be {what} tensor for this runner (built for {spec.dtype}), got {value.dtype}")
        if value.ndim != 1 + len(spec.row_shape) or tuple(value.shape[1:]) != spec.row_shape:
            raise ValueError(f"{name} must have shape (B, {', '.join(map(str, spec.row_shape))}) (the shape the "
                             f"runner was built for), got {tuple(value.shape)}")
        if n_rows is not None and value.shape[0] != n_rows:
            raise ValueError(f"{name} has {value.shape[0]} rows, but the other inputs have {n_rows}")
        return value.shape[0]

    def __call__(self, **inputs: torch.Tensor | None) -> BaseModelOutputWithPooling:
        unknown = set(inputs) - set(self._inputs)
        if unknown:
            raise TypeError(f"unexpected inputs {sorted(unknown)}; this runner takes {sorted(self._inputs)}")
        given = {k: v for k, v in inputs.items() if v is not None}
        missing = set(self._inputs) - set(given) - set(self._optional)
        if missing:
            raise TypeError(f"missing inputs {sorted(missing)}")
        n = None
        for name, value in given.items():
            n = self._check(name, value, n)

        with torch.no_grad():  # outputs are ordinary tensors (not inference tensors): callers may edit them in place
            last, pooled = self._static
            keep_last = self.keep_last_hidden_state or pooled is None
            out_last = last.new_empty((n, *last.shape[1:])) if keep_last else None  # (n, N, D)
            out_pooled = None if pooled is None else pooled.new_empty((n, *pooled.shape[1:]))  # (n, P)
            for start in range(0, n, self.batch_size):
                rows = min(self.batch_size, n - start)
                for name, buffer in self._buffers.items():
                    if name in given:
                        buffer[:rows].copy_(given[name][start:start + rows])
                    else:  # an optional input left out: its neutral value (e.g. attend to every token)
                        buffer[:rows].fill_(self._inputs[name].pad_value)
                    if rows < self.batch_size:
                        buffer[rows:].fill_(self._inputs[name].pad_value)
                if self._graph is not None:
                    self._graph.replay()
                else:
                    with torch.inference_mode():
                        last, pooled = self._static = self._run(self._buffers)
                if keep_last:
                    out_last[start:start + rows].copy_(last[:rows])
                if pooled is not None:
                    out_pooled[start:start + rows].copy_(pooled[:rows])
        return BaseModelOutputWithPooling(last_hidden_state=out_last, pooler_output=out_pooled)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{s.name}=({self.batch_size}, {', '.join(map(str, s.row_shape))}) {s.dtype}"
                           for s in self._inputs.values())
        return f"{type(self).__name__}({shapes}, cuda_graph={self.cuda_graph}, device={self.device})"
