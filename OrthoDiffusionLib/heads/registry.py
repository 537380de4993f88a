"""Registry of head classes by name, so a stored head set can be rebuilt from its manifest alone.

``@register_head("name")`` records the constructor arguments of every instance in ``.config``
(JSON-friendly: tuples become lists). ``build_head(name, config)`` calls the constructor again.
Constructors therefore take only plain JSON values (ints, floats, strings, lists, dicts).
"""

from __future__ import annotations

import functools
import inspect

from torch import nn

HEAD_TYPES: dict[str, type[nn.Module]] = {}


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def register_head(name: str):
    def decorate(cls):
        if name in HEAD_TYPES and HEAD_TYPES[name] is not cls:
            raise ValueError(f"head type '{name}' is registered twice")
        original_init = cls.__init__
        signature = inspect.signature(original_init)

        @functools.wraps(original_init)
        def __init__(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop("self")
            # Subclass constructors run the parent's recorder first; the outermost class wins.
            if type(self) is cls:
                self.config = _jsonable(arguments)
                self.head_type = name

        cls.__init__ = __init__
        HEAD_TYPES[name] = cls
        return cls

    return decorate


def build_head(head_type: str, config: dict) -> nn.Module:
    try:
        cls = HEAD_TYPES[head_type]
    except KeyError:
        raise KeyError(f"unknown head type '{head_type}' (known: {', '.join(sorted(HEAD_TYPES))})") from None
    return cls(**config)


def head_spec(module: nn.Module) -> dict:
    """``{"type": ..., "config": ...}`` for a registered head instance."""
    if not hasattr(module, "head_type"):
        raise TypeError(f"{type(module).__name__} is not a registered head (use @register_head)")
    return {"type": module.head_type, "config": module.config}
