"""FastAPI + SQLAlchemy async, instrumented by pgwarden.

The lifespan creates the engine and instruments it (one line); routes use sessions as usual.
``/report`` has the bug pgwarden is for: it keeps its session (and so a pooled connection)
after the request. ``/debug/pool`` shows who holds the pool's connections: the report route,
with its file and line, its task and the backend pid. When the pool runs dry, SQLAlchemy's
``TimeoutError`` says the same.

Run it::

    DATABASE_URL=postgresql+asyncpg://app@db/shop uvicorn examples.fastapi_sqlalchemy.app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import pgwarden


def create_app(database_url: str | None = None, **engine_options: Any) -> FastAPI:
    """The application; ``database_url`` defaults to ``$DATABASE_URL``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url or os.environ["DATABASE_URL"],
                                     **engine_options)
        app.state.pool = pgwarden.instrument(engine, name="api")  # the one added line
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        app.state.kept = []
        yield
        app.state.pool.remove()
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    async def session(request: Request) -> AsyncIterator[AsyncSession]:
        async with request.app.state.sessions() as s:
            yield s

    @app.get("/answer")
    async def answer(s: AsyncSession = Depends(session)) -> dict[str, int]:
        return {"answer": (await s.execute(text("select 42"))).scalar_one()}

    @app.get("/report")
    async def report(request: Request) -> dict[str, int]:
        s = request.app.state.sessions()  # the bug: this session is never closed
        rows = (await s.execute(text("select count(*) from pg_class"))).scalar_one()
        request.app.state.kept.append(s)  # ... and outlives the request
        return {"relations": rows}

    @app.get("/debug/pool")
    async def debug_pool(request: Request) -> dict[str, Any]:
        pool = request.app.state.pool
        return {"stats": {k: v for k, v in pool.stats().as_dict().items()
                          if not isinstance(v, dict)},
                "holders": [h.as_dict() for h in pool.holders()]}

    return app


app = create_app() if "DATABASE_URL" in os.environ else None
