"""Benchmark datasets: one database per size, generated once, cloned for every measurement.

`rewards_bench_600k` holds the pristine sample (core/sample_data.py) of 600k users
(`rewards_bench_600k_skewed` the same size in the other data shape); what defines it
(users, seed, as-of, years, shape, row counts) is stored as JSON in the database's comment, so `bench run`
knows the world it measures and can add a day of it. A run works on a clone
(`CREATE DATABASE … TEMPLATE …`), so the dataset itself is never changed by a job.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from core import migrations, sample_data
from core.sample_data import SHAPES
from core.db import make_engine

DEFAULT_USERS = 600_000
DEFAULT_SEED = 42
DEFAULT_AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)
DEFAULT_YEARS = 3.0
NAME_PREFIX = "rewards_bench"
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BenchError(Exception):
    """Bad usage or a missing server: one line for the user."""


@dataclass(frozen=True)
class World:
    users: int
    seed: int = DEFAULT_SEED
    as_of: datetime = DEFAULT_AS_OF
    years: float = DEFAULT_YEARS
    shape: str = SHAPES[0]

    def as_json(self) -> dict[str, Any]:
        return {"users": self.users, "seed": self.seed, "as_of": self.as_of.isoformat(), "years": self.years,
                "shape": self.shape}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        return cls(int(data["users"]), int(data["seed"]), datetime.fromisoformat(data["as_of"]), float(data["years"]),
                   data.get("shape", SHAPES[0]))


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    world: World
    counts: dict[str, int]
    generate_seconds: float | None = None


def server_url(given: str | None = None) -> str:
    """The server to benchmark on: --database-url, else BENCH_DATABASE_URL, else DATABASE_URL."""
    url = given or os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise BenchError("--database-url: not given, and neither BENCH_DATABASE_URL nor DATABASE_URL is set "
                         "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)")
    return url


def size_label(users: int) -> str:
    """600000 -> '600k', 2000000 -> '2m', 1500 -> '1500'."""
    if users % 1_000_000 == 0:
        return f"{users // 1_000_000}m"
    if users % 1000 == 0:
        return f"{users // 1000}k"
    return str(users)


def dataset_name(world: World, prefix: str = NAME_PREFIX) -> str:
    name = f"{prefix}_{size_label(world.users)}"
    if world.seed != DEFAULT_SEED:
        name += f"_s{world.seed}"
    if world.shape != SHAPES[0]:
        name += f"_{world.shape}"
    return _checked_name(name)


def database_url(server: str, name: str) -> str:
    return make_url(server).set(database=_checked_name(name)).render_as_string(hide_password=False)


def _checked_name(name: str) -> str:
    if not _SAFE_NAME.match(name):
        raise BenchError(f"database name {name!r}: use lower-case letters, digits and _")
    return name


@contextmanager
def _admin(server: str) -> Iterator[Any]:
    engine = make_engine(server, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def create_database(server: str, name: str, *, template: str | None = None) -> str:
    """(Re)create database `name`, empty or as a copy of `template`; return its URL."""
    with _admin(server) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)'))
        # FILE_COPY: copying the files beats WAL-logging every block of a multi-GB template
        source = f' TEMPLATE "{_checked_name(template)}" STRATEGY FILE_COPY' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{source}'))
    return database_url(server, name)


def drop_database(server: str, name: str) -> None:
    with _admin(server) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)'))


def find_dataset(server: str, name: str) -> Dataset | None:
    """The dataset stored in database `name`, or None when there is none (or it is incomplete)."""
    with _admin(server) as conn:
        comment = conn.execute(text(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :name"
        ), {"name": name}).scalar()
    if not comment:
        return None
    try:
        meta = json.loads(comment)
        return Dataset(name, database_url(server, name), World.from_json(meta["world"]), meta["counts"],
                       meta.get("generate_seconds"))
    except (ValueError, KeyError):
        return None


def generate_dataset(server: str, world: World, *, name: str | None = None,
                     progress: Callable[[str], None] | None = None) -> Dataset:
    """Create a fresh database, migrate it, generate the world into it, and label it with its world."""
    name = name or dataset_name(world)
    url = create_database(server, name)
    engine = make_engine(url)
    started = time.monotonic()
    try:
        migrations.migrate(engine)
        counts = sample_data.generate(engine, users=world.users, seed=world.seed, as_of=world.as_of,
                                      years=world.years, shape=world.shape, progress=progress)
    finally:
        engine.dispose()
    seconds = round(time.monotonic() - started, 1)
    meta = {"world": world.as_json(), "counts": counts, "generate_seconds": seconds}
    with _admin(server) as conn:
        conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(meta)}'"))
    return Dataset(name, url, world, counts, seconds)


def ensure_dataset(server: str, world: World, *, regenerate: bool = False, prefix: str = NAME_PREFIX,
                   progress: Callable[[str], None] | None = None) -> Dataset:
    """The stored dataset of `world`, generated first when missing (or asked to)."""
    name = dataset_name(world, prefix)
    found = None if regenerate else find_dataset(server, name)
    if found is not None and found.world == world:
        return found
    return generate_dataset(server, world, name=name, progress=progress)


def migrated_engine(url: str) -> Engine:
    """An engine on a clone, with any migration added since the dataset was generated applied."""
    engine = make_engine(url)
    migrations.migrate(engine)
    return engine
