"""pgwarden's error tree: every error crosses a process boundary whole."""

from __future__ import annotations

import inspect
import pickle

import pytest

import pgwarden.pool  # noqa: F401  (its errors join the tree)
from pgwarden.errors import ConnectError, PgwardenError


def every_error() -> list[type[PgwardenError]]:
    seen: list[type[PgwardenError]] = []
    todo = [PgwardenError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


def build(cls: type[PgwardenError]) -> PgwardenError:
    """An instance with every required argument given (a distinct value for each)."""
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for name, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if param.default is not inspect.Parameter.empty or param.kind in (
                param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.KEYWORD_ONLY:
            kwargs[name] = f"value of {name}"
        else:
            args.append(f"{cls.__name__} message")
    return cls(*args, **kwargs)


@pytest.mark.parametrize("cls", every_error(), ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_message_and_attributes(cls: type[PgwardenError]) -> None:
    err = build(cls)
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301  (our own bytes)
    assert type(copy) is cls and str(copy) == str(err) and copy.args == err.args
    public = {k: v for k, v in vars(err).items() if not k.startswith("_")}
    assert {k: v for k, v in vars(copy).items() if not k.startswith("_")} == public


def test_a_connect_error_keeps_its_sqlstate_and_kind() -> None:
    err = ConnectError("the server is full", target="postgresql://app@127.0.0.1/db",
                       sqlstate="53300", kind="server_full")
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301  (our own bytes)
    assert (copy.sqlstate, copy.kind, copy.target) == ("53300", "server_full",
                                                       "postgresql://app@127.0.0.1/db")
