"""`BatchEncoding`, the dict the tokenizer (and the image processor and processor) return, and its tensors."""

from __future__ import annotations

import numpy as np
import torch


class BatchEncoding(dict):
    """A dict of model inputs with attribute access (`enc.input_ids`) and `.to(device)` for its tensors."""

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

