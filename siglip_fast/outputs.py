"""Model outputs with attribute, key and tuple access, like transformers' ModelOutput.

Fields left as None are absent from the keys and from the tuple, exactly as in transformers, so
`outputs[0]`, `outputs["pooler_output"]` and `outputs.pooler_output` all work as users expect. Like transformers'
classes they are ordered dicts (so code that handles a `Mapping` / `dict` output handles them), build from keyword
fields, from positional fields in field order, or from one mapping of fields (`type(out)({k: ...})`, which is how
accelerate's `send_to_device` / `convert_to_fp32` rebuild an output), and refuse the dict methods that would make the
keys and the attributes disagree (`pop`, `update`, `setdefault`, `del`).

They are siglip_fast's own classes, not subclasses of transformers' `ModelOutput` (which would make transformers a
runtime dependency): `isinstance(out, transformers.utils.ModelOutput)` is False. Check `isinstance(out,
collections.abc.Mapping)`, `siglip_fast.outputs.ModelOutput`, or the field you need (`hasattr(out, "pooler_output")`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any


class ModelOutput(OrderedDict):
    _fields: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        if args:
            if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
                kwargs = dict(args[0])
            elif len(args) <= len(self._fields) and not set(kwargs) & set(self._fields[:len(args)]):
                kwargs = {**dict(zip(self._fields, args, strict=False)), **kwargs}
            else:
                raise TypeError(f"{type(self).__name__} takes its fields {self._fields} as keywords, in order as "
                                f"positional arguments, or as one mapping; got {len(args)} positional argument(s) "
                                f"and keywords {sorted(kwargs)}")
        unknown = set(kwargs) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected fields {sorted(unknown)}; fields: {self._fields}")
        for name in self._fields:
            self[name] = kwargs.get(name)

    def __setitem__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        if value is None:
            super().pop(key, None)
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

    def _refuse(self, method: str):
        raise TypeError(f"{type(self).__name__}.{method}() is not supported: an output's keys are its fields that "
                        "are set; assign a field instead (out.name = value, or None to clear it)")

    def __delitem__(self, key) -> None:
        self._refuse("__delitem__")

    def pop(self, *args, **kwargs):
        self._refuse("pop")

    def popitem(self, *args, **kwargs):
        self._refuse("popitem")

    def setdefault(self, *args, **kwargs):
        self._refuse("setdefault")

    def update(self, *args, **kwargs):
        self._refuse("update")

    def __reduce__(self):
        return (_rebuild, (type(self), dict(self)))

    def __copy__(self):
        return type(self)(**dict(self))

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
