"""`BatchEncoding`, the dict the tokenizer (and the image processor and processor) return, and its tensors."""

from __future__ import annotations

import numpy as np
import torch


class BatchEncoding(dict):
    """A dict of model inputs with attribute access (`enc.input_ids`) and `.to(device)` for its tensors; from a
    tokenizer call also `sequence_ids(i)`."""

    def __init__(self, data: dict | None = None, *, sequence_ids: list[list[int | None]] | None = None, **kwargs):
        super().__init__(data or {}, **kwargs)
        self.__dict__["_sequence_ids"] = sequence_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per position of row `batch_index`: 0 for the first text's tokens, 1 for the pair's, None for the special
        tokens the tokenizer added and for padding (transformers' fast encodings' `sequence_ids`)."""
        rows = self.__dict__.get("_sequence_ids")
        if rows is None:
            raise ValueError("sequence_ids() is available on what a tokenizer call returns, not on this "
                             f"{type(self).__name__} (built by pad(), a processor's image part, or by hand)")
        if not _is_index(batch_index) or not -len(rows) <= batch_index < len(rows):
            raise IndexError(f"batch_index must be an int in [0, {len(rows)}), got {batch_index!r}")
        return list(rows[batch_index])

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; fields: {list(self)}") from None

    @property
    def data(self) -> dict:
        return dict(self)

    def to(self, *args, **kwargs) -> "BatchEncoding":
        """Move every tensor value in place, like `Tensor.to`. A dtype applies to floating-point tensors only, so
        `.to("cuda", torch.bfloat16)` moves the ids and casts the pixels. Lists and arrays are left as they are."""
        device = kwargs.get("device")
        for a in args:
            if isinstance(a, (str, torch.device, int)):
                device = a
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(*args, **kwargs) if value.is_floating_point() else value.to(device=device)
        return self


def _is_index(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _to_tensors(data: dict, return_tensors: str | None, *, what: str) -> dict:
    """Stack the lists of `data` into 'pt' / 'np' tensors; None leaves them as lists."""
    if return_tensors is None:
        return data
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    out = {}
    for key, value in data.items():
        lengths = {len(v) for v in value} if value and isinstance(value[0], list) else None
        if lengths is not None and len(lengths) > 1:
            raise ValueError(
                f"cannot stack {key!r} into a tensor: the {what} have different lengths {sorted(lengths)}; pass "
                "padding=True or padding='max_length' (with truncation=True) to get equal lengths"
            )
        array = np.asarray(value, dtype=np.int64)
        out[key] = torch.from_numpy(array) if return_tensors == "pt" else array
    return out

