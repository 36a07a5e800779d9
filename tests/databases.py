"""Databases for the job store's tests: a SQLite file per test, or a PostgreSQL database made for the session; and
Redis for the Celery tests (``redis_url``).

PostgreSQL runs on 127.0.0.1:5432 (trust auth, user postgres). The session's database is called
``spaceport_test_<random>``, created empty and dropped at the end; ``database_url`` empties its tables before
each test, so every test starts from a fresh store on both databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STORE_TABLES = ("events", "stage_runs", "jobs", "api_keys", "owners")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A new empty PostgreSQL database for this test session (dropped afterwards)."""
    import psycopg

    name = f"spaceport_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 as user postgres ({exc}); start it "
                    "(.ci/run starts what is down)")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        present = {row[0] for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        tables = [table for table in STORE_TABLES if table in present]
        if tables:
            connection.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty job-store database: a SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'spaceport.db'}"
    url = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return url


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Redis on 127.0.0.1:6379 (the module's ``REDIS_URL``: a database of its own), emptied before and after."""
    import redis

    url = request.module.REDIS_URL
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable on 127.0.0.1:6379 ({exc}); start it (.ci/run starts what is down)")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
