"""Benchmark datasets: one database per size, generated once, cloned for every measurement.

`rewards_bench_600k` holds the pristine sample (cli/sample_data.py) of 600k users
(`rewards_bench_600k_skewed` the same size in the other data shape); what defines it
(users, seed, as-of, years, shape, row counts) is stored as JSON in the database's comment, so `bench run`
knows the world it measures and can add a day of it. A run works on a clone
(`CREATE DATABASE … TEMPLATE …`), so the dataset itself is never changed by a job.

On a Citus cluster (`Citus`: the coordinator's maintenance URL, the workers from its pg_dist_node) a
dataset is a database of the same name on every node, with the extension and the workers registered
(as `bash bench/citus.sh createdb` does), migrated through the coordinator (migration 019 distributes
the tables) and generated through it. A template does not carry the workers' shards, so there is no
clone: a run measures the dataset itself and consumes it (bench/run.py).
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

from cli import sample_data
from cli.sample_data import SHAPES
from core import migrations
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
    citus: Citus | None = None


@dataclass(frozen=True)
class Citus:
    """A Citus cluster reached through its coordinator: the workers are those registered in the
    coordinator's maintenance database (`bash bench/citus.sh up` registers them there)."""

    workers: tuple[tuple[str, int], ...]
    shard_count: int
    version: str

    @classmethod
    def of(cls, server: str, shard_count: int) -> Citus:
        with _admin(server) as conn:
            try:
                version = conn.execute(text(
                    "SELECT extversion FROM pg_extension WHERE extname = 'citus'")).scalar()
                workers = conn.execute(text(
                    "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary' "
                    "AND isactive ORDER BY nodeport")).all() if version else []
            except Exception as error:  # noqa: BLE001 - any failure: not a usable coordinator
                raise BenchError(f"--citus: {server} is not a Citus coordinator ({error})") from None
        if not version or not workers:
            raise BenchError(f"--citus: {server} has no citus extension or no registered workers "
                             "(bash bench/citus.sh up)")
        return cls(tuple((str(host), int(port)) for host, port in workers), shard_count, str(version))

    def worker_urls(self, server: str) -> list[str]:
        return [make_url(server).set(host=host, port=port).render_as_string(hide_password=False)
                for host, port in self.workers]

    def describe(self) -> str:
        return f"Citus {self.version}, coordinator + {len(self.workers)} workers, {self.shard_count} shards per table"


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


def create_database(server: str, name: str, *, template: str | None = None, citus: Citus | None = None) -> str:
    """(Re)create database `name`, empty or as a copy of `template`; return its URL. With `citus`, an
    empty database on every node, the extension in each, the workers registered with the coordinator."""
    if citus is not None:
        if template:
            raise BenchError("a Citus database cannot be cloned from a template (the shards live on the workers)")
        return _create_citus_database(server, name, citus)
    with _admin(server) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)'))
        # FILE_COPY: copying the files beats WAL-logging every block of a multi-GB template
        source = f' TEMPLATE "{_checked_name(template)}" STRATEGY FILE_COPY' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{source}'))
    return database_url(server, name)


def _create_citus_database(server: str, name: str, citus: Citus, *, register: bool = True) -> str:
    """The database on every node, the extension on the workers; with `register`, on the coordinator too
    and the workers registered (without: a plain database on the coordinator, for `_distribute` later)."""
    drop_database(server, name, citus=citus)
    for worker in citus.worker_urls(server):  # the workers first: the coordinator connects to them
        with _admin(worker) as conn:
            conn.execute(text(f'CREATE DATABASE "{_checked_name(name)}"'))
            # The app starts every session with `-c jit=off` (core/connect.py), a startup option that
            # Citus does not pass on to the coordinator's connections to the workers: there the shard
            # queries, whose estimates over intermediate results are large, were JIT-compiled per shard
            # (expiring-soon: 42 s instead of 5 s at 5k users). The app's setting, set where it applies.
            conn.execute(text(f'ALTER DATABASE "{name}" SET jit = off'))
        with _admin(database_url(worker, name)) as conn:
            conn.execute(text("CREATE EXTENSION citus"))
    with _admin(server) as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f'ALTER DATABASE "{name}" SET citus.shard_count = {int(citus.shard_count)}'))
    if register:
        _register(server, name, citus)
    return database_url(server, name)


def _register(server: str, name: str, citus: Citus) -> None:
    coordinator = make_url(server)
    with _admin(database_url(server, name)) as conn:
        conn.execute(text("CREATE EXTENSION citus"))
        conn.execute(text("SELECT citus_set_coordinator_host(:host, :port)"),
                     {"host": coordinator.host or "127.0.0.1", "port": coordinator.port or 5432})
        for host, port in citus.workers:
            conn.execute(text("SELECT citus_add_node(:host, :port)"), {"host": host, "port": port})


_SAMPLE_TABLES = ("user_referral_codes", "user_referral_relationships", "user_subscription_payments",
                  "user_point_transactions", "user_point_balances")


def _distribute(server: str, name: str, citus: Citus) -> None:
    """Make the generated plain database a Citus one: the extension, the workers, then migration 019's
    `rewards_distribute_on_citus()` (the documented path for a database that gets the extension after
    019), which copies each table's rows into its shards; the coordinator's local copies are then
    truncated and the shards analyzed."""
    _register(server, name, citus)
    with _admin(database_url(server, name)) as conn:
        conn.execute(text("SELECT public.rewards_distribute_on_citus()"))
        # the ledger's append-only trigger refuses TRUNCATE, also of the coordinator's now hidden local
        # copy: triggers do not fire for this one session (superuser), the shards are not touched
        conn.execute(text("SET session_replication_role = replica"))
        for table in _SAMPLE_TABLES:
            conn.execute(text("SELECT truncate_local_data_after_distributing_table(:table)"),
                         {"table": f"public.{table}"})
        conn.execute(text("RESET session_replication_role"))
        for table in _SAMPLE_TABLES:
            conn.execute(text(f"VACUUM (ANALYZE) public.{table}"))


def drop_database(server: str, name: str, *, citus: Citus | None = None) -> None:
    """Drop database `name` (on a Citus cluster: on the coordinator, then on every worker)."""
    for url in [server, *(citus.worker_urls(server) if citus else [])]:
        with _admin(url) as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)'))


def find_dataset(server: str, name: str, citus: Citus | None = None) -> Dataset | None:
    """The dataset stored in database `name`, or None when there is none (or it is incomplete)."""
    with _admin(server) as conn:
        comment = conn.execute(text(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :name"
        ), {"name": name}).scalar()
    if not comment:
        return None
    try:
        meta = json.loads(comment)
        if citus is not None and meta.get("shard_count") != citus.shard_count:
            return None
        return Dataset(name, database_url(server, name), World.from_json(meta["world"]), meta["counts"],
                       meta.get("generate_seconds"), citus)
    except (ValueError, KeyError):
        return None


def forget_dataset(server: str, name: str) -> None:
    """Remove the label of a dataset about to be changed in place (a Citus run): a later run finds no
    dataset there and generates it again."""
    with _admin(server) as conn:
        conn.execute(text(f'COMMENT ON DATABASE "{_checked_name(name)}" IS NULL'))


def generate_dataset(server: str, world: World, *, name: str | None = None,
                     progress: Callable[[str], None] | None = None, citus: Citus | None = None) -> Dataset:
    """Create a fresh database, migrate it, generate the world into it, and label it with its world."""
    name = name or dataset_name(world)
    # On Citus the world is generated into a plain database on the coordinator, then distributed:
    # sample_data's updates of a reference table from its temporary plan tables are refused by Citus
    # ("relation sample_relationship is not distributed"), and one copy into the shards is faster
    # than the coordinator routing every generated row.
    url = (_create_citus_database(server, name, citus, register=False) if citus is not None
           else create_database(server, name))
    engine = make_engine(url)
    started = time.monotonic()
    try:
        migrations.migrate(engine)
        counts = sample_data.generate(engine, users=world.users, seed=world.seed, as_of=world.as_of,
                                      years=world.years, shape=world.shape, progress=progress)
    finally:
        engine.dispose()
    if citus is not None:
        if progress:
            progress(f"distributing over {len(citus.workers)} workers ({citus.shard_count} shards per table)")
        _distribute(server, name, citus)
    seconds = round(time.monotonic() - started, 1)
    meta = {"world": world.as_json(), "counts": counts, "generate_seconds": seconds}
    if citus is not None:
        meta["shard_count"] = citus.shard_count
    with _admin(server) as conn:
        conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(meta)}'"))
    return Dataset(name, url, world, counts, seconds, citus)


def ensure_dataset(server: str, world: World, *, regenerate: bool = False, prefix: str = NAME_PREFIX,
                   progress: Callable[[str], None] | None = None, citus: Citus | None = None) -> Dataset:
    """The stored dataset of `world`, generated first when missing (or asked to)."""
    name = dataset_name(world, prefix)
    found = None if regenerate else find_dataset(server, name, citus)
    if found is not None and found.world == world:
        return found
    return generate_dataset(server, world, name=name, progress=progress, citus=citus)


def migrated_engine(url: str) -> Engine:
    """An engine on a clone, with any migration added since the dataset was generated applied."""
    engine = make_engine(url)
    migrations.migrate(engine)
    return engine
