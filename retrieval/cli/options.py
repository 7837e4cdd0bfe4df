"""Command-line options built from the config dataclasses, so a default or a choice lives once.

``config_option(parser, EmbedConfig, "batch_size", "--batch-size", help="items per forward pass")``
adds an option whose type, choices and shown default come from the field of the dataclass
(``retrieval.config``). Its value is recorded only when the option is given, so
:func:`given` returns exactly what the user changed, and ``EmbedConfig(**given(args, EmbedConfig))``
or ``base.replace(**given(args, EmbedConfig))`` leaves every other field at the config's own
default: the command line cannot drift from the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["MODEL_HELP", "config_default", "config_option", "cosine_type", "given"]

# How every command describes a model name (resolved by retrieval.model.load_model).
MODEL_HELP = (
    "a model folder saved by the toolkit (e.g. a training run's best/), a transformers CLIP/SigLIP "
    "folder, a Hugging Face hub id org/name[@revision] (cached in the Hugging Face cache), or an open_clip "
    "checkpoint (hf-hub:org/name, open_clip:ARCH/TAG, a weight file with open_clip_config.json beside it)"
)


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise AssertionError(f"{cls.__name__} has no field {name!r}")  # a mistake in this package
    return fields[name]


def config_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``cls``."""
    field = _field(cls, name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _value_type(cls: type, name: str) -> type:
    """``int`` / ``float`` / ``str`` for a field typed ``X``, ``X | None`` or ``tuple[X, ...]``."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint if hint in (int, float, str) else str


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value)
    return str(value).replace("%", "%%")


def config_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    name: str,
    *flags: str,
    help: str,
    **kwargs: Any,
) -> None:
    """Add an option setting field ``name`` of ``cls``; see the module docstring.

    ``kwargs`` go to ``add_argument`` (e.g. ``action="store_true"``, ``nargs="+"``); type and
    choices default to the field's.
    """
    default = config_default(cls, name)
    kwargs["dest"] = f"{cls.__name__}.{name}"
    kwargs["default"] = argparse.SUPPRESS
    if kwargs.get("action") not in ("store_true", "store_false"):
        kwargs.setdefault("type", _value_type(cls, name))
        choices = getattr(cls, "CHOICES", {}).get(name)
        if choices is not None:
            kwargs.setdefault("choices", choices)
        else:
            kwargs.setdefault("metavar", flags[-1].lstrip("-").upper().replace("-", "_"))
        if default is not None:
            help = f"{help} (default: {_shown(default)})"
    parser.add_argument(*flags, help=help, **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` set on the command line (options added by :func:`config_option`)."""
    prefix = f"{cls.__name__}."
    return {key[len(prefix) :]: value for key, value in vars(args).items() if key.startswith(prefix)}


def cosine_type(flag: str, *, positive: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` reading a cosine (a bad value is a usage error naming it)."""
    from retrieval.corpus.config import check_cosine

    def parse(text: str) -> float:
        try:
            return check_cosine(text, flag, positive=positive)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace(f"{flag} must", "must")) from None

    parse.__name__ = "cosine"
    return parse
