"""Recipe: FastAPI + SQLAlchemy async (examples/fastapi_sqlalchemy/app.py), through httpx's ASGI
transport (no server), on a real PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from examples.fastapi_sqlalchemy.app import create_app

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations.sqlalchemy import ExplainedTimeoutError

from ..integrations.helpers import line_of, server_pids, url

APP = __import__("examples.fastapi_sqlalchemy.app", fromlist=["x"]).__file__


async def test_a_route_that_leaks_a_session_shows_up_in_the_holders(pg: EmbeddedPostgres) -> None:
    app = create_app(url(pg, "asyncpg"), pool_size=2, max_overflow=0, pool_timeout=0.3)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/answer")).json() == {"answer": 42}
        assert (await client.get("/debug/pool")).json()["holders"] == []
        assert (await client.get("/report")).status_code == 200
        body = (await client.get("/debug/pool")).json()
        [holder] = body["holders"]
        line = line_of(APP, "# the bug: this session is never closed") + 1
        assert holder["function"] == "report" and holder["line"] == line
        assert holder["file"].endswith("app.py") and holder["pool"] == "api"
        assert holder["transaction_state"] == "idle in transaction"
        assert holder["pid"] in server_pids(pg)
        assert body["stats"]["in_use"] == 1 and body["stats"]["requests_total"] == 2
        await client.get("/report")  # the pool of 2 is now exhausted
        with pytest.raises(sa.exc.TimeoutError) as caught:
            await client.get("/answer")
        assert isinstance(caught.value, ExplainedTimeoutError)
        assert str(caught.value).count(f"app.py:{line} in report") == 2
        for s in app.state.kept:
            await s.close()
