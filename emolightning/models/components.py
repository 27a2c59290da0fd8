"""Components chosen by `class_path` (the head, the loss, the encoder's learning rates) as plain data and back.

A component is a small class whose typed `__init__` arguments are its configuration (jsonargparse shows
them in `--help` and builds it from `class_path` + `init_args`) and which keeps each argument under its
own name. EmotionClassifier stores a component in its hyperparameters as `{class_path, init_args}`, so a
checkpoint holds only plain data (it loads with `weights_only=True`), and `component` turns that dict back
into the object, with or without the CLI.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


def component_config(obj: Any) -> dict:
    """`{class_path, init_args}` of a component, nested components included."""
    cls = type(obj)
    names = [n for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    init_args = {}
    for name in names:
        value = getattr(obj, name)
        init_args[name] = component_config(value) if type(value).__module__ != "builtins" and value is not None else value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def component(value: T | dict | None, base: type[T], default: type[T], option: str) -> T:
    """`value` as a `base` instance: itself, `default()` for None, or built from a `{class_path, init_args}` dict.

    Only subclasses of `base` are built, so a checkpoint cannot name an arbitrary class.
    """
    if value is None:
        return default()
    if isinstance(value, base):
        return value
    if isinstance(value, dict) and isinstance(value.get("class_path"), str):
        module_name, _, name = value["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            cls = None
        if not isinstance(cls, type) or not issubclass(cls, base):
            raise ConfigError(
                f"`{option}` names the class '{value['class_path']}', which is not a {base.__name__} of emolightning. "
                f"Name one of its {base.__name__} classes (`emolightning fit --{option}.help {base.__name__}` lists them)."
            )
        return cls(**(value.get("init_args") or {}))
    raise ConfigError(f"`{option}` is {value!r}; give a `class_path` (and its `init_args`) of a {base.__name__}.")
