"""`python -m bench generate|run|profile|startup`: datasets at millions of rows, and each job against its bound.

    python -m bench generate --users 600000            # rewards_bench_600k, built once
    python -m bench run --users 60000 600000 --json out.json
    python -m bench run --users 200000 --shape default skewed   # both data shapes, side by side
    python -m bench run --users 200000 --shape random --seed 1 2 3   # shapes drawn by each seed; worst ratios
    python -m bench profile expire-points --users 600000   # time each SQL statement of one job
    python -m bench startup --runs 11                     # CPU and wall time of --help, health, jobs
    python -m bench run --citus --users 600000            # the same on the local Citus cluster (bench/citus.sh)

The server is --database-url, else BENCH_DATABASE_URL, else DATABASE_URL (any database of it: the
benchmark creates its own). With --citus the server is the coordinator of a Citus cluster
(--database-url, else BENCH_CITUS_URL, else 127.0.0.1:$CITUS_PORT or 9700): each dataset is created
on every node, generated, distributed, and measured in place (no clone). Exit codes: 0 done, 1 a job failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from bench import report
from bench.datasets import (DEFAULT_AS_OF, DEFAULT_SEED, DEFAULT_USERS, DEFAULT_YEARS, NAME_PREFIX, SHAPES,
                            BenchError, Citus, World, dataset_name, drawn_shape, ensure_dataset, generate_dataset,
                            server_url)
from bench.run import measure_size

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Citus advises 2–4 times the workers' cores in shards for analytical queries; the local cluster's three
# nodes share this machine's cores, and each shard more is one task more for every multi-shard statement
# (docs/citus.md).
LOCAL_SHARD_COUNT = 2 * (os.cpu_count() or 1)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BenchError(f"{self.prog}: {message}")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _as_of(text: str) -> datetime:
    from core.clock import parse_as_of

    try:
        return parse_as_of(text)
    except ValueError as error:
        raise BenchError(f"--as-of: {error}") from None


def _positive(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    main = _Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = main.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def world_options(command: argparse.ArgumentParser, *, many: bool) -> None:
        command.add_argument("--users", type=_positive, nargs="+" if many else None,
                             default=[DEFAULT_USERS] if many else DEFAULT_USERS, metavar="N",
                             help=f"users in the dataset{' (several: a scale curve)' if many else ''} "
                                  f"(default {DEFAULT_USERS})")
        command.add_argument("--seed", type=int, nargs="+" if many else None,
                             default=[DEFAULT_SEED] if many else DEFAULT_SEED,
                             help="the dataset's seed (its rows; with --shape random its shape too)"
                                  f"{'; several: each measured' if many else ''} (default {DEFAULT_SEED})")
        command.add_argument("--as-of", default=DEFAULT_AS_OF.isoformat(), metavar="WHEN",
                             help="the dataset's as-of instant, where its history ends (default %(default)s)")
        command.add_argument("--years", type=float, default=DEFAULT_YEARS, help="years of history (default 3)")
        command.add_argument("--shape", choices=SHAPES, nargs="+" if many else None,
                             default=[SHAPES[0]] if many else SHAPES[0],
                             help="the data shape: default, skewed (long chains, influencers with thousands "
                                  "of referrals, referrers never referred, payments on many days of a month), or "
                                  "random (every distribution drawn from wide ranges by the seed)"
                                  f"{'; several: each measured' if many else ''} (default %(default)s)")
        command.add_argument("--database-url", metavar="URL", help="the PostgreSQL server to use")
        command.add_argument("--citus", action="store_true",
                             help="on a Citus cluster through its coordinator (default the local one of "
                                  "bench/citus.sh); the dataset is measured in place and used up")
        command.add_argument("--shard-count", type=_positive, default=LOCAL_SHARD_COUNT,
                             help="with --citus: shards per distributed table (default %(default)s: twice this "
                                  "machine's cores, which the local cluster's nodes share, as Citus advises for "
                                  "analytical work; Citus's own default is 32)")
        command.add_argument("--prefix", default=NAME_PREFIX, help="database name prefix (default %(default)s)")

    generate = commands.add_parser("generate", help="(re)build the dataset of a size in its own database")
    world_options(generate, many=False)

    run = commands.add_parser("run", help="measure every job against its bound, at each size")
    world_options(run, many=True)
    run.add_argument("--jobs", metavar="JOB,…", help="only these jobs (default: the whole pipeline)")
    run.add_argument("--no-daily", action="store_true", help="skip the one-more-day measurement")
    run.add_argument("--regenerate", action="store_true", help="build the datasets again even if present")
    run.add_argument("--keep", action="store_true", help="keep the measured clone databases (…_run)")
    run.add_argument("--json", metavar="PATH", help="where to write the results (default bench/results/…)")
    run.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown")

    profile = commands.add_parser("profile", help="time every SQL statement of one job's first run")
    profile.add_argument("job", metavar="JOB")
    world_options(profile, many=False)
    profile.add_argument("--keep", action="store_true", help="keep the profiled clone database (…_prof)")

    audit = commands.add_parser("audit", help="reconcile with the rules audit against its bound (issue 24)")
    world_options(audit, many=False)

    startup = commands.add_parser("startup", help="CPU and wall time of `--help`, `health` and `jobs`, "
                                                  "each run as its own process")
    startup.add_argument("--runs", type=_positive, default=11, help="timed runs of each command (default 11)")
    startup.add_argument("--database-url", metavar="URL", help="the PostgreSQL server to use")
    startup.add_argument("--database", default="rewards_startup",
                         help="the scratch database, created and dropped (default %(default)s)")
    return main


def _server(args: argparse.Namespace) -> tuple[str, Citus | None]:
    """The server, and with --citus the cluster behind it."""
    if not getattr(args, "citus", False):
        return server_url(args.database_url), None
    server = (args.database_url or os.environ.get("BENCH_CITUS_URL")
              or f"postgresql://postgres@127.0.0.1:{os.environ.get('CITUS_PORT', '9700')}/postgres")
    return server, Citus.of(server, args.shard_count)


def cmd_generate(args: argparse.Namespace) -> int:
    server, citus = _server(args)
    world = World(args.users, args.seed, _as_of(args.as_of), args.years, args.shape)
    dataset = generate_dataset(server, world, name=dataset_name(world, args.prefix), progress=_progress,
                               citus=citus)
    size = {"users": world.users, "world": world.as_json(), "dataset": dataset.counts,
            "generate_seconds": dataset.generate_seconds, "shape": drawn_shape(world)}
    print(f"{dataset.name}: {report.dataset_line(size)}")
    return 0


def _jobs(selection: str | None) -> list[str]:
    from jobs import PIPELINE

    names = [job.name for job in PIPELINE]
    if not selection:
        return names
    wanted = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise BenchError(f"--jobs: unknown {', '.join(unknown)}; one of {', '.join(names)}")
    return [name for name in names if name in wanted]


def _machine(server: str, citus: Citus | None = None) -> dict[str, Any]:
    from sqlalchemy import text

    from core.db import make_engine
    from core.settings import CoreSettings

    engine = make_engine(server, pool_size=1)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            shared_buffers = conn.execute(text("SHOW shared_buffers")).scalar_one()
    finally:
        engine.dispose()
    return {"cpus": os.cpu_count(), "server": f"PostgreSQL {version} (shared_buffers {shared_buffers})",
            "engine": citus.describe() if citus else "PostgreSQL (one server)",
            "python": platform.python_version(), "batch_size": CoreSettings(_env_file=None).batch_size}


def cmd_run(args: argparse.Namespace) -> int:
    server, citus = _server(args)
    as_of, jobs = _as_of(args.as_of), _jobs(args.jobs)
    results: dict[str, Any] = {"started": datetime.now().astimezone().isoformat(timespec="seconds"),
                               "machine": _machine(server, citus), "jobs": jobs, "sizes": []}
    engine = "citus-" if citus else ""
    json_path = (Path(args.json) if args.json
                 else RESULTS_DIR / f"bench-{engine}{time.strftime('%Y%m%dT%H%M%S')}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for users in args.users:
        for shape, seed in [(shape, seed) for shape in args.shape for seed in args.seed]:
            world = World(users, seed, as_of, args.years, shape)
            _progress(f"dataset of {users} users, {shape} shape, seed {seed}")
            dataset = ensure_dataset(server, world, regenerate=args.regenerate, prefix=args.prefix,
                                     progress=_progress, citus=citus)
            results["sizes"].append(measure_size(server, dataset, jobs, daily=not args.no_daily, keep=args.keep,
                                                 progress=_progress))
            json_path.write_text(json.dumps(results, indent=2, default=str))  # each saved as soon as measured
    print(report.render(results))
    print(f"\nresults: {json_path}")
    if args.markdown:
        Path(args.markdown).write_text(report.render(results, markdown=True) + "\n")
    failed = [job["job"] for size in results["sizes"] for job in size["jobs"] if job["first"]["exit_code"] != 0]
    return 1 if failed else 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bench import profile

    if args.citus:
        raise BenchError("profile: not on Citus (it profiles a template clone of the dataset)")
    server = server_url(args.database_url)
    [job] = _jobs(args.job)
    world = World(args.users, args.seed, _as_of(args.as_of), args.years, args.shape)
    dataset = ensure_dataset(server, world, prefix=args.prefix, progress=_progress)
    result, times = profile.profile_job(server, dataset, job, keep=args.keep, progress=_progress)
    print(profile.render(result, times))
    return 0 if result.status == "SUCCEEDED" else 1


def cmd_audit(args: argparse.Namespace) -> int:
    from bench import audit

    server = server_url(args.database_url)
    world = World(args.users, args.seed, _as_of(args.as_of), args.years, args.shape)
    dataset = ensure_dataset(server, world, prefix=args.prefix, progress=_progress)
    print(json.dumps(audit.measure(server, dataset, progress=_progress), indent=2))
    return 0


def cmd_startup(args: argparse.Namespace) -> int:
    from bench import startup

    print(startup.run(server_url(args.database_url), runs=args.runs, database=args.database, progress=_progress))
    return 0


COMMANDS = {"generate": cmd_generate, "run": cmd_run, "profile": cmd_profile, "audit": cmd_audit,
            "startup": cmd_startup}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BenchError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
