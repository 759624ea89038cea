"""`python -m bench startup`: what a command costs before it does anything (issue 13 item 5), and what
an idle run costs (issue 26 target 2: CLI start, settings, connect, migration check, claim, record).

Each command (`--help`, `health`, `jobs`, and the idle run `run expire-pending --as-of 2020-01-01`,
which finds nothing to do but is claimed and recorded as any run) runs `--runs` times as its own
process, `python scheduler.py CMD`, against a scratch database migrated for it (with one run of every
job recorded, so `jobs` has rows to show). The children may write their bytecode (PYTHONDONTWRITEBYTECODE
is left out of their environment), as an installed package has it compiled at install: the warm-up run
writes it, the timed runs read it. For each run the interpreter's CPU time (user + sys, from
`getrusage(RUSAGE_CHILDREN)` around the child) and the wall time are taken; the table shows the
medians, the CPU range, and the 1-minute load average before and after, since a busy machine
inflates both. One untimed run of each command first warms the file cache and the bytecode.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
IDLE_RUN = ("run", "expire-pending", "--as-of", "2020-01-01", "--json")
COMMANDS: tuple[tuple[str, ...], ...] = (("--help",), ("health",), ("jobs",), IDLE_RUN)
# The floor under any run on the given stack: importing the libraries a run cannot do without, and nothing
# of ours. The idle run's target is read against it (issue 26: by how much it is missed, and why).
FLOOR = ("(the stack's imports alone)",)
STACK_IMPORTS = "import sqlalchemy.dialects.postgresql.psycopg2, pydantic_settings, structlog, psycopg2"
TARGET_CPU_SECONDS = 0.3
TARGET_IDLE_RUN_WALL_SECONDS = 0.3  # issue 26: the idle run's wall time, start to exit
SCRATCH_DATABASE = "rewards_startup"


@dataclass(frozen=True)
class Timing:
    command: str
    cpu: list[float]  # seconds of user + sys, one per run
    wall: list[float]

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)


def run_once(command: tuple[str, ...], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `python scheduler.py COMMAND` process (or, for the floor,
    `python -c STACK_IMPORTS`); it must exit 0."""
    argv = ["-c", STACK_IMPORTS] if command == FLOOR else [str(REPO / "scheduler.py"), *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"scheduler.py {' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def measure(env: dict[str, str], cwd: Path, runs: int,
            commands: tuple[tuple[str, ...], ...] = (*COMMANDS, FLOOR)) -> list[Timing]:
    timings = []
    for command in commands:
        run_once(command, env, cwd)  # warm-up, not counted
        samples = [run_once(command, env, cwd) for _ in range(runs)]
        timings.append(Timing(" ".join(command), [cpu for cpu, _ in samples], [wall for _, wall in samples]))
    return timings


def render(timings: list[Timing], load_before: float, load_after: float, runs: int) -> str:
    lines = [f"start-up of `python scheduler.py CMD`, median of {runs} runs "
             f"(1-minute load average {load_before:.2f} before, {load_after:.2f} after; {os.cpu_count()} CPUs)",
             "",
             "| command | CPU s (user+sys), median | CPU s, min–max | wall s, median | wall s, min | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for timing in timings:
        lines.append(f"| `{timing.command}` | {timing.median_cpu:.3f} | {min(timing.cpu):.3f}–{max(timing.cpu):.3f} "
                     f"| {timing.median_wall:.3f} | {min(timing.wall):.3f} | {_target(timing)} |")
    by_command = {timing.command: timing for timing in timings}
    idle, floor = by_command.get(" ".join(IDLE_RUN)), by_command.get(" ".join(FLOOR))
    if idle and floor:
        lines += ["", f"The idle run's wall time is {idle.median_wall / floor.median_wall:.2f}× the floor's "
                      f"({idle.median_wall:.3f} s against {floor.median_wall:.3f} s): the floor is "
                      f"`python -c \"{STACK_IMPORTS}\"`, which no run on this stack can go below."]
    return "\n".join(lines)


def _target(timing: Timing) -> str:
    """Start-up commands: ≤ 0.3 s of CPU; the idle run: ≤ 0.3 s of wall time (its median)."""
    if timing.command == " ".join(FLOOR):
        return "the floor under any run"
    if timing.command == " ".join(IDLE_RUN):
        return f"≤ {TARGET_IDLE_RUN_WALL_SECONDS} s wall: {'yes' if timing.median_wall <= TARGET_IDLE_RUN_WALL_SECONDS else 'NO'}"
    return f"≤ {TARGET_CPU_SECONDS} s CPU: {'yes' if timing.median_cpu <= TARGET_CPU_SECONDS else 'NO'}"


def run(server: str, *, runs: int, database: str = SCRATCH_DATABASE,
        progress: Callable[[str], None] = lambda _line: None) -> str:
    """Measure every command against a scratch database `database` on `server` (dropped after)."""
    from bench.datasets import create_database, drop_database
    from core import migrations
    from core.db import make_engine

    url = create_database(server, database)
    try:
        engine = make_engine(url, pool_size=1)
        try:
            migrations.migrate(engine)
        finally:
            engine.dispose()
        with tempfile.TemporaryDirectory(prefix="rewards-startup-") as scratch:
            cwd = Path(scratch)  # no .env of the checkout
            env = {name: value for name, value in os.environ.items()
                   if not name.startswith("REWARDS_") and name != "PYTHONDONTWRITEBYTECODE"}
            env.update({"DATABASE_URL": url, "REWARDS_REPORTS_DIR": str(cwd / "reports")})
            progress("one run of every job, so that `jobs` has runs to show")
            subprocess.run([sys.executable, str(REPO / "scheduler.py"), "run-all", "--json"], cwd=cwd, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            load_before = os.getloadavg()[0]
            progress(f"each command {runs} times")
            timings = measure(env, cwd, runs)
            load_after = os.getloadavg()[0]
    finally:
        drop_database(server, database)
    return render(timings, load_before, load_after, runs)
