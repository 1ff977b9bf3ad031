"""Declared options: dataclass fields whose metadata makes their CLI flags.

Recipes (``recipes.base.Recipe.Options``) and matchers (``matching.losses``' ``Options``)
declare their settings with :func:`option`, so a setting's default, help and choices are written
once and ``attrpreserve compress`` generates its flag from them."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, *, flag: str | None = None,
           choices: tuple | None = None) -> Any:
    """An option: a dataclass field whose metadata makes its CLI flag (``flag``, default
    ``--NAME`` with dashes; ``choices`` restricts the values)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


def option_flag(f) -> str:
    """The CLI flag of an option field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def require(ok: bool, message: str) -> None:
    """Options validation: ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)
