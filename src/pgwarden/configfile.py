"""Configuration files, read one way: TOML (``tomllib``), and every problem a
:class:`~pgwarden.errors.ConfigFileError` that names the file, the dotted key and what is
allowed (the CLI's exit 78). The guard's policy files and the budget files are read with it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TableReader", "kind_of", "load_toml"]


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed file.

    Raises:
        ConfigFileError: the file cannot be read, is not UTF-8, or is not valid TOML.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}", path=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}", path=path) from None


def kind_of(value: object) -> str:
    """How a wrong value is shown in an error: ``a table``, ``a list``, or its short repr."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class TableReader:
    """Reads one source (a file, or a dict named ``path``); subclasses add the file format's
    own values."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str | None, problem: str) -> ConfigFileError:
        """The error for ``key`` (dotted; ``None``: the whole file)."""
        where = f"{self.path}: key '{key}'" if key else self.path
        return ConfigFileError(f"{where}: {problem}", path=self.path, key=key)

    def table(self, value: object, key: str, allowed: Iterable[str]) -> Mapping[str, Any]:
        """``value`` as a table whose keys are all in ``allowed``.

        Raises:
            ConfigFileError: not a table, or an unknown key (named, with the allowed ones).
        """
        if not isinstance(value, Mapping):
            raise self.fail(key or None, f"expected a table, got {kind_of(value)}")
        allowed = tuple(allowed)
        for k in value:
            if k not in allowed:
                full = f"{key}.{k}" if key else str(k)
                raise self.fail(full, f"unknown key; allowed: {', '.join(allowed)}")
        return value
