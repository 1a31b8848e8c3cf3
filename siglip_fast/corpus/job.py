"""The job description: every argument of `embed_corpus`, validated once, passed down to each stage, and recorded in
the manifest. Also the job's error type and result, and the one place that picks the device and dtype."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

DEFAULT_SHARD_SIZE = 10_000  # plain image files (from folders, brace patterns or list files) per unit
DEFAULT_TEXT_CHUNK_BYTES = 4 << 20  # bytes of a --texts file per unit (lines belong to the chunk where they start)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class CorpusError(ValueError):
    """A problem with the job's arguments, its inputs as a whole or its output directory (the CLI prints it as a usage
    error)."""


def _paths(name: str, value) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)):
        raise CorpusError(f"{name}: expected a list of paths, got the single {type(value).__name__} {value!r} "
                          f"(a string would be read as its characters; write [{os.fspath(value)!r}])")
    try:
        items = list(value)
    except TypeError:
        raise CorpusError(f"{name}: expected a list of paths, got {type(value).__name__}") from None
    out = []
    for v in items:
        if not isinstance(v, (str, os.PathLike)):
            raise CorpusError(f"{name}: expected paths (str or os.PathLike), got {type(v).__name__} {v!r}")
        out.append(os.fspath(v))
    return tuple(out)


def _int(name: str, value, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CorpusError(f"--{name.replace('_', '-')} must be an int >= {low}, got {value!r}")


def parse_fields(fields) -> tuple[str, ...]:
    if isinstance(fields, str):
        fields = fields.split(",")
    out = tuple(f.strip().lower().lstrip(".") for f in fields if f and f.strip())
    if not out:
        raise CorpusError("fields: expected 'image' and/or text member extensions such as 'txt', got nothing")
    if len(set(out)) != len(out):
        raise CorpusError(f"fields: {','.join(out)} names a field twice")
    for f in out:
        if f != "image" and ("." + f) in IMAGE_EXTENSIONS:
            raise CorpusError(f"fields: {f!r} is an image extension; use 'image' (the sample's image, any format)")
    return out


@dataclasses.dataclass(frozen=True)
class Job:
    """What to embed, where, and how. `identity()` is the part that decides the numbers: a rerun on the same output
    must agree on it (the manifest records it; a difference is refused, named)."""

    inputs: tuple[str, ...]
    out: str
    model: str
    files: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    tar: bool = False
    fields: tuple[str, ...] = ("image",)
    shard_size: int = DEFAULT_SHARD_SIZE
    text_chunk_bytes: int = DEFAULT_TEXT_CHUNK_BYTES
    batch_size: int = 32
    workers: int | None = None
    device: str | None = None
    dtype: str | None = None
    backend: str = "auto"
    cuda_graph: bool | None = None
    max_num_patches: int | None = None
    draft: bool = True
    progress: bool = True

    @classmethod
    def create(cls, inputs, out, *, model, files=(), texts=(), fields=("image",), device=None, dtype=None,
               **kw) -> Job:
        """Validate every argument (CorpusError naming it, the expected and the received value)."""
        if not isinstance(model, (str, os.PathLike)):
            raise CorpusError(f"model: expected a checkpoint directory or hub id, got {type(model).__name__}")
        if not isinstance(out, (str, os.PathLike)):
            raise CorpusError(f"out: expected a path, got {type(out).__name__} {out!r}")
        if isinstance(device, torch.device):
            device = str(device)
        if isinstance(dtype, torch.dtype):
            names = {v: k for k, v in DTYPES.items()}
            if dtype not in names:
                raise CorpusError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype}")
            dtype = names[dtype]
        if dtype is not None and dtype not in DTYPES:
            raise CorpusError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        job = cls(inputs=_paths("inputs", inputs), out=os.fspath(out), model=os.fspath(model),
                  files=_paths("files", files), texts=_paths("texts", texts), fields=parse_fields(fields),
                  device=device, dtype=dtype, **kw)
        _int("shard_size", job.shard_size, 1)
        _int("text_chunk_bytes", job.text_chunk_bytes, 1)
        _int("batch_size", job.batch_size, 1)
        _int("workers", job.workers, 0, optional=True)
        _int("max_num_patches", job.max_num_patches, 1, optional=True)
        for name in ("tar", "draft", "progress"):
            if not isinstance(getattr(job, name), bool):
                raise CorpusError(f"{name}: expected True or False, got {getattr(job, name)!r}")
        if job.cuda_graph is not None and not isinstance(job.cuda_graph, bool):
            raise CorpusError(f"cuda_graph: expected None, True or False, got {job.cuda_graph!r}")
        if not (job.inputs or job.files or job.texts):
            raise CorpusError("nothing to embed: give image files or directories, tar shards (names or brace patterns "
                              "such as data-{000000..000099}.tar), --files lists and/or --texts files")
        return job

    @property
    def single_file(self) -> bool:
        return self.out.endswith(".npy")

    @property
    def out_dir(self) -> str:
        return self.out + ".parts" if self.single_file else self.out

    def identity(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The settings that change the rows (the model's identity and resolved sizes are added by the runner)."""
        return {"dtype": str(dtype).removeprefix("torch."), "fields": list(self.fields), "tar": self.tar,
                "shard_size": self.shard_size, "text_chunk_bytes": self.text_chunk_bytes, "draft": self.draft}

    def record(self) -> dict:
        """The whole description, as the manifest records it (what produced the output, identity or not)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def choose_device_dtype(device_arg: str | None, dtype_arg: str | None, local_rank: int,
                        world: int) -> tuple[torch.device, torch.dtype]:
    """The job's device and dtype: `device_arg` or CUDA when available (cuda:LOCAL_RANK under torchrun), `dtype_arg`
    or bf16 on CUDA; on CPU bf16 where it is native (about twice fp32's speed, pooled cosine >= 0.9999; see
    siglip_fast.cpu.default_cpu_dtype), else fp32. The only place these defaults are decided."""
    if device_arg is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(device_arg)
        except (RuntimeError, ValueError):
            raise CorpusError(f"--device: {device_arg!r} is not a device (expected e.g. 'cpu', 'cuda' or "
                              f"'cuda:1')") from None
    if device.type not in ("cpu", "cuda"):
        raise CorpusError(f"--device: {str(device_arg)!r} is not supported (expected 'cpu' or 'cuda[:N]')")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CorpusError(f"--device {device_arg}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if dtype_arg is None:  # on CPU bf16 where the CPU computes it natively (AVX512-BF16 / AMX), else fp32
        from ..cpu import default_cpu_dtype

        dtype = torch.bfloat16 if device.type == "cuda" else default_cpu_dtype()
    else:
        dtype = DTYPES[dtype_arg]
    return device, dtype


def default_workers(device: torch.device) -> int:
    """Decoding processes per rank: on a GPU min(8, cores per rank - 1); on CPU the model needs every core and decodes
    far faster than it embeds, so 0 (decode in the main process) unless a rank has 8 cores or more (then 1)."""
    per_rank = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if device.type == "cuda":
        return max(1, min(8, per_rank - 1))
    return 1 if per_rank >= 8 else 0


@dataclasses.dataclass
class CorpusResult:
    """What the job did. `rows`/`skipped`/`units` are the whole output's (every rank gets them); `units_written`,
    `units_reused`, `rows_written`, `input_wait_s` and `loop_seconds` this rank's part of this call."""

    out: str
    rows: int
    skipped: int
    units: int
    units_written: list[int]
    units_reused: list[int]
    seconds: float
    rank: int = 0
    world_size: int = 1
    input_wait_s: float = 0.0
    rows_written: int = 0
    loop_seconds: float = 0.0
    summary: list[dict] = dataclasses.field(default_factory=list)  # one dict per rank (rank 0 prints it)

    @property
    def rows_per_s(self) -> float:
        """This rank's embedding rate over its loop (model loading and listing excluded)."""
        return self.rows_written / self.loop_seconds if self.loop_seconds > 0 else 0.0


def short_error(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {line}"
    return text if len(text) <= 200 else text[:197] + "..."


def check_paths_exist(paths: Sequence[str], what: str) -> None:
    for p in paths:
        if os.path.isdir(p):
            raise CorpusError(f"{what}: {p!r} is a directory, expected a UTF-8 text file")
        if not os.path.isfile(p):
            raise CorpusError(f"{what}: {p!r}: no such file")
