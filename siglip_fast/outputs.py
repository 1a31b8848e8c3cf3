"""Model outputs with attribute, key and tuple access, like transformers' ModelOutput.

Fields left as None are absent from the keys and from the tuple, exactly as in transformers, so
`outputs[0]`, `outputs["pooler_output"]` and `outputs.pooler_output` all work as users expect.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ModelOutput(OrderedDict):
    _fields: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any):
        super().__init__()
        unknown = set(kwargs) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected fields {sorted(unknown)}; fields: {self._fields}")
        for name in self._fields:
            self[name] = kwargs.get(name)

    def __setitem__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        if value is None:
            self.pop(key, None)
        else:
            super().__setitem__(key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self._fields:
            self[key] = value
        else:
            object.__setattr__(self, key, value)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def __reduce__(self):
        return (_rebuild, (type(self), dict(self)))

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


def _rebuild(cls, values):
    return cls(**values)


class BaseModelOutput(ModelOutput):
    _fields = ("last_hidden_state", "hidden_states", "attentions")


class BaseModelOutputWithPooling(ModelOutput):
    _fields = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


class ImageClassifierOutput(ModelOutput):
    _fields = ("loss", "logits", "hidden_states", "attentions")


class SiglipOutput(ModelOutput):
    _fields = (
        "loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds",
        "text_model_output", "vision_model_output",
    )

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())
