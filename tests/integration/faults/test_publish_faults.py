"""The jobs that publish files (reconcile, with and without --repair, and expiring-soon) under faults
(issue 28 item 1): SIGKILL at every step of a run, a reports folder that is full or fills up after
the first file, and one that turns read-only, at each step.

What must hold every time (SPEC "reconcile": a reconcile is all-or-nothing): a file appears under its
final name only for a run recorded SUCCEEDED; a repair commits only with the run and the report that
counts it (so every repaired cache row is counted by exactly one recorded report, and a run that is not
recorded repaired nothing); whatever a killed run left aside is settled by the next run (a recorded
run's files published, the others removed); expiring-soon never leaves two files for one as-of; and a
failure names the file in one line.

The kills are made by the child itself at a chosen call of the function that does the step (no timing
luck), drawn at random among the step's calls; a try whose kill point is not reached runs to its end and
does not count as a kill of that step.
"""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from cli import sample_data
from core.db import make_engine
from core.runner import run_job
from jobs import JOBS, PipelineSettings
from jobs.reports import finance
from tests.integration.faults.conftest import Forked, cli_env, fork_child, fork_cli

pytestmark = pytest.mark.slow

WORLD_AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)
USERS = 150
BATCH_SIZE = 4
TRIES_PER_STEP = int(os.environ.get("TRIES", "20"))
DRIFTED_PER_TRY = 9  # cache rows put wrong before each reconcile try: several chunks and repair batches
RECONCILE_SUFFIXES = ("-findings.csv", ".journal.csv", ".csv", ".json", ".html", ".xlsx")


@dataclass(frozen=True)
class KillPoint:
    """Kill the run at call number `call` (from 1) of `target` ("module:attribute.path"), as the call
    starts or once it returned (`after`); with `inside`, only calls made within that function count."""

    target: str
    call: int = 1
    after: bool = False
    inside: str | None = None


# Each step, the points where a kill lands in it (one drawn per try; the call number at random).
RECONCILE_STEPS: dict[str, list[Callable[[random.Random], KillPoint]]] = {
    "settle what earlier runs left": [
        lambda rng: KillPoint("jobs.reconcile_publish:_settle_leftovers", after=rng.random() < 0.5),
    ],
    # drawn instead of the above when an earlier kill left a recorded run's files aside (`rng.aside` of them)
    "settle what earlier runs left, files aside": [
        lambda rng: KillPoint("core.reports:publish_aside", rng.randint(1, rng.aside), rng.random() < 0.5,
                              inside="core.reports:settle_leftovers"),
    ],
    "stream the discrepancies (CSV aside, rows)": [
        lambda rng: KillPoint("jobs.reconcile_audit:_store_chunk", rng.randint(1, 3), rng.random() < 0.5),
        lambda rng: KillPoint("jobs.rules_audit:insert", after=True),
    ],
    "write the documents aside": [
        lambda rng: KillPoint("core.reports:FileSet.write_text", rng.randint(1, 2), rng.random() < 0.5),
        lambda rng: KillPoint("jobs.reports.finance:write_xlsx", after=rng.random() < 0.5),
    ],
    "seal the files (fsync)": [
        lambda rng: KillPoint("core.reports:_sync_file", rng.randint(1, 5), rng.random() < 0.5,
                              inside="core.reports:FileSet.seal"),
    ],
    "repair, in the recording transaction": [
        lambda rng: KillPoint("jobs.reconcile_publish:_repair_batch", rng.randint(1, 3), after=True),
        lambda rng: KillPoint("jobs.reconcile_publish:_insert_run", after=rng.random() < 0.5),
    ],
    "record (the run's end, before the commit)": [
        lambda rng: KillPoint("core.runs:finish_in", after=True, inside="core.job:RunContext.recording"),
    ],
    "publish (after the commit)": [
        lambda rng: KillPoint("core.reports:publish_aside", rng.randint(1, 5), rng.random() < 0.5,
                              inside="core.reports:FileSet.publish"),
        lambda rng: KillPoint("core.reports:FileSet.publish", after=True),
    ],
}

EXPIRING_STEPS: dict[str, list[Callable[[random.Random], KillPoint]]] = {
    "settle what earlier runs left": [
        lambda rng: KillPoint("jobs.expiring_soon:_settle_leftovers", after=rng.random() < 0.5),
    ],
    "write the rows aside": [
        lambda rng: KillPoint("jobs.expiring_soon:_count", rng.randint(1, 2), rng.random() < 0.5),
    ],
    "seal the file (fsync)": [
        lambda rng: KillPoint("core.reports:FileSet.seal", after=rng.random() < 0.5),
    ],
    "record (the run's end, before the commit)": [
        lambda rng: KillPoint("core.runs:finish_in", after=True, inside="core.job:RunContext.recording"),
    ],
    "publish (after the commit)": [
        lambda rng: KillPoint("core.reports:publish_aside", after=rng.random() < 0.5,
                              inside="core.reports:FileSet.publish"),
    ],
}


# ── running a job in a forked child that may kill itself ─────────────────────

def _resolve(target: str) -> tuple[Any, str]:
    """("module:Class.attr") -> (the object holding the attribute, its name)."""
    import importlib

    module_name, path = target.split(":")
    holder: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        holder = getattr(holder, parent)
    return holder, name


def _install_kill(point: KillPoint) -> None:
    """In the child: SIGKILL this process at `point`."""
    import contextlib
    import functools
    import inspect

    depth = {"inside": 0 if point.inside else 1, "calls": 0}
    if point.inside:
        holder, name = _resolve(point.inside)
        outer = getattr(holder, name)
        if inspect.isgeneratorfunction(getattr(outer, "__wrapped__", None)):  # a context manager: its block
            @functools.wraps(outer)
            @contextlib.contextmanager
            def counting_cm(*args: Any, **kwargs: Any) -> Iterator[Any]:
                depth["inside"] += 1
                try:
                    with outer(*args, **kwargs) as value:
                        yield value
                finally:
                    depth["inside"] -= 1
            setattr(holder, name, counting_cm)
        else:
            @functools.wraps(outer)
            def counting(*args: Any, **kwargs: Any) -> Any:
                depth["inside"] += 1
                try:
                    return outer(*args, **kwargs)
                finally:
                    depth["inside"] -= 1
            setattr(holder, name, counting)

    holder, name = _resolve(point.target)
    original = getattr(holder, name)

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def killing(*args: Any, **kwargs: Any) -> Any:
        counted = depth["inside"] > 0
        if counted:
            depth["calls"] += 1
        due = counted and depth["calls"] == point.call
        if due and not point.after:
            die()
        value = original(*args, **kwargs)
        if due:
            die()
        return value

    setattr(holder, name, killing)


def fork_job(job: str, url: str, reports: Path, log: Path, *, as_of: datetime, repair: bool = False,
             before: Callable[[], None] | None = None) -> Forked:
    """`run_job(job)` in a child forked from this process; it prints `STATUS error` as its last line."""
    def body() -> int:
        if before:
            before()
        settings = PipelineSettings(_env_file=None, database_url=url, reports_dir=reports, batch_size=BATCH_SIZE)
        # the server is never killed here, so waiting for its WAL flush on every commit buys nothing
        engine = make_engine(make_url(url).update_query_dict({"options": "-c synchronous_commit=off"}), pool_size=2)
        result = run_job(JOBS[job], settings=settings, engine=engine, as_of=as_of, repair=repair)
        print(f"{result.status} {result.error or ''}")
        return 0 if result.status == "SUCCEEDED" else 1

    return fork_child(body, log)


# ── what the database and the folder hold ────────────────────────────────────

def _cache(engine: Engine) -> dict[Any, tuple[int, int, int]]:
    with engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(text(
            "SELECT user_id, balance, total_earned, total_spent FROM public.user_point_balances"))}


def _drift(engine: Engine, rng: random.Random, count: int) -> None:
    """Put `count` cache rows wrong (balance and earned moved together, or balance alone)."""
    with engine.begin() as conn:
        users = [row[0] for row in conn.execute(text("SELECT user_id FROM public.user_point_balances ORDER BY 1"))]
        for user in rng.sample(users, count):
            moved = rng.randint(1, 50)
            both = rng.random() < 0.5
            conn.execute(text("UPDATE public.user_point_balances SET balance = balance + :m,"
                              " total_earned = total_earned + CASE WHEN :both THEN :m ELSE 0 END WHERE user_id = :u"),
                         {"m": moved, "both": both, "u": user})


def _runs(engine: Engine, job: str) -> dict[int, Any]:
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(text(
            "SELECT id, status, as_of, stats, error FROM public.job_runs WHERE job = :job ORDER BY id"), {"job": job})}


def _recorded_reconciles(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return {row.run_id: row for row in conn.execute(text(
            "SELECT r.run_id, r.repaired, j.status,"
            "       (SELECT array_agg(d.user_id) FROM public.reconciliation_discrepancies d WHERE d.run_id = r.run_id)"
            "         AS listed"
            " FROM public.reconciliation_runs r JOIN public.job_runs j ON j.id = r.run_id"))}


def _files(folder: Path) -> tuple[list[str], list[str]]:
    """(names under a final name, names aside) in the folder."""
    names = sorted(path.name for path in folder.iterdir()) if folder.exists() else []
    return [n for n in names if not n.startswith(".")], [n for n in names if n.startswith(".")]


def _run_of(name: str) -> int:
    stem = name[1:-5] if name.startswith(".") else name
    for suffix in RECONCILE_SUFFIXES:
        if stem.endswith(suffix) and stem.startswith("reconciliation-"):
            return int(stem[: -len(suffix)].rsplit("-", 1)[1])
    assert stem.startswith("expiring-") and stem.endswith(".csv"), name
    return int(stem[: -len(".csv")].rsplit("-", 1)[1])


def _assert_final_files_only_of_succeeded_runs(folder: Path, runs: dict[int, Any]) -> None:
    final, _aside = _files(folder)
    not_recorded = [name for name in final if runs[_run_of(name)].status != "SUCCEEDED"]
    assert not not_recorded, f"files of runs that are not recorded under final names: {not_recorded}"


# ── fixtures ─────────────────────────────────────────────────────────────────

@pytest.fixture
def small_world(database_url: str) -> str:
    finance.warm_up()  # imported and compiled once here, not in every forked child
    engine = make_engine(database_url, pool_size=1)
    sample_data.generate(engine, users=USERS, as_of=WORLD_AS_OF)
    engine.dispose()
    return database_url


ASIDE = ", files aside"


def _kill_tries(steps: dict[str, list[Callable[[random.Random], KillPoint]]], rng: random.Random,
                try_once: Callable[[int, str, KillPoint], bool],
                leftovers: Callable[[], int] = lambda: 0) -> dict[str, Counter[str]]:
    """`TRIES_PER_STEP` kills in each step (a try whose point is not reached does not count), in a
    shuffled order; `try_once(number, step, point)` returns whether the child was killed. A step with a
    variant `STEP, files aside` draws from it when `leftovers()` counts files of a recorded run aside."""
    outcomes: dict[str, Counter[str]] = {step: Counter() for step in steps if not step.endswith(ASIDE)}
    order = [step for step in outcomes for _ in range(TRIES_PER_STEP)]
    rng.shuffle(order)
    number = 0
    while order:
        step = order.pop()
        rng.aside = leftovers()  # type: ignore[attr-defined]
        variant = step + ASIDE if step + ASIDE in steps and rng.aside and rng.random() < 0.7 else step  # type: ignore[attr-defined]
        point = rng.choice(steps[variant])(rng)
        killed = try_once(number, step, point)
        number += 1
        outcomes[step]["killed" if killed else "not reached"] += 1
        if not killed:
            assert outcomes[step]["not reached"] <= 3 * TRIES_PER_STEP, f"step {step!r} is hardly ever reached"
            order.insert(rng.randrange(len(order) + 1), step)
    return outcomes


# ── SIGKILL at every step ────────────────────────────────────────────────────

def test_reconcile_with_repair_killed_at_every_step_repairs_all_or_nothing(small_world, engine, tmp_path):
    url = engine.url.render_as_string(hide_password=False)
    reports = tmp_path / "reports"
    rng = random.Random("issue-28-reconcile")
    as_of = WORLD_AS_OF + timedelta(hours=1)
    counted = {"killed before the record": 0, "killed after the record": 0}

    def try_once(number: int, step: str, point: KillPoint) -> bool:
        _drift(engine, rng, DRIFTED_PER_TRY)
        before = _cache(engine)
        previous = set(_runs(engine, "reconcile"))
        child = fork_job("reconcile", url, reports, tmp_path / f"try-{number}.log", as_of=as_of, repair=True,
                         before=lambda: _install_kill(point))
        code = child.wait(timeout=60)
        log = (tmp_path / f"try-{number}.log").read_text()
        assert code in (-signal.SIGKILL, 0), f"try {number} ({step}, {point}) exited {code}:\n{log}"
        runs = _runs(engine, "reconcile")
        [run_id] = set(runs) - previous
        run = runs[run_id]
        after = _cache(engine)
        recorded = _recorded_reconciles(engine)
        changed = {user for user in set(before) | set(after) if before.get(user) != after.get(user)}
        if run.status == "SUCCEEDED":
            counted["killed after the record" if code else "not reached"] = counted.get(
                "killed after the record" if code else "not reached", 0) + 1
            assert run_id in recorded and recorded[run_id].repaired == len(changed) > 0, (step, point)
            assert changed <= set(recorded[run_id].listed), (step, point)  # every repair is in its report
        else:
            assert code == -signal.SIGKILL and run.status == "RUNNING", (step, point, run.status, log)
            counted["killed before the record"] += 1
            assert changed == set(), f"{step} {point}: a run that is not recorded repaired {len(changed)} rows"
            assert run_id not in recorded, (step, point)
        _assert_final_files_only_of_succeeded_runs(reports, runs)
        return code == -signal.SIGKILL

    def recorded_aside() -> int:
        succeeded = {run_id for run_id, run in _runs(engine, "reconcile").items() if run.status == "SUCCEEDED"}
        return sum(_run_of(name) in succeeded for name in _files(reports)[1])

    outcomes = _kill_tries(RECONCILE_STEPS, rng, try_once, leftovers=recorded_aside)

    finisher = fork_job("reconcile", url, reports, tmp_path / "finish.log", as_of=as_of, repair=True)
    assert finisher.wait() == 0, (tmp_path / "finish.log").read_text()
    runs = _runs(engine, "reconcile")
    recorded = _recorded_reconciles(engine)
    assert {run_id for run_id, row in recorded.items()} == {i for i, r in runs.items() if r.status == "SUCCEEDED"}
    assert {r.status for r in runs.values()} <= {"SUCCEEDED", "ABANDONED"}
    final, aside = _files(reports)
    assert aside == []  # every leftover settled
    _assert_final_files_only_of_succeeded_runs(reports, runs)
    for run_id, row in recorded.items():  # every recorded run's five files, the JSON with its repairs
        mine = [name for name in final if _run_of(name) == run_id]
        assert len(mine) == len(RECONCILE_SUFFIXES), (run_id, mine)
        [summary] = [name for name in mine if name.endswith(".json")]
        assert json.loads((reports / summary).read_text())["repaired"] == row.repaired
    assert all(outcome["killed"] >= TRIES_PER_STEP for outcome in outcomes.values())
    print("reconcile --repair kills:", {step: dict(o) for step, o in outcomes.items()}, counted)


def test_expiring_soon_killed_at_every_step_never_leaves_two_files_for_one_as_of(small_world, engine, tmp_path):
    url = engine.url.render_as_string(hide_password=False)
    reports = tmp_path / "reports"
    rng = random.Random("issue-28-expiring")
    days = iter(range(10_000))
    state = {"as_of": WORLD_AS_OF + timedelta(days=next(days))}

    def try_once(number: int, step: str, point: KillPoint) -> bool:
        previous = set(_runs(engine, "expiring-soon"))
        child = fork_job("expiring-soon", url, reports, tmp_path / f"try-{number}.log", as_of=state["as_of"],
                         before=lambda: _install_kill(point))
        code = child.wait(timeout=60)
        assert code in (-signal.SIGKILL, 0), (tmp_path / f"try-{number}.log").read_text()
        runs = _runs(engine, "expiring-soon")
        [run_id] = set(runs) - previous
        _assert_final_files_only_of_succeeded_runs(reports, runs)
        if runs[run_id].status == "SUCCEEDED":  # the as-of is done: the next tries take the next one
            state["as_of"] = WORLD_AS_OF + timedelta(days=next(days))
        return code == -signal.SIGKILL

    outcomes = _kill_tries(EXPIRING_STEPS, rng, try_once)
    finisher = fork_job("expiring-soon", url, reports, tmp_path / "finish.log", as_of=state["as_of"])
    assert finisher.wait() == 0, (tmp_path / "finish.log").read_text()

    runs = _runs(engine, "expiring-soon")
    final, aside = _files(reports)
    assert aside == []
    _assert_final_files_only_of_succeeded_runs(reports, runs)
    succeeded = {run_id for run_id, run in runs.items() if run.status == "SUCCEEDED"}
    assert sorted(_run_of(name) for name in final) == sorted(succeeded)  # each recorded run's file, once
    per_as_of = Counter(runs[_run_of(name)].as_of for name in final)
    assert set(per_as_of.values()) == {1}, per_as_of
    assert len(per_as_of) >= 5  # several as-ofs went through kills
    assert any(runs[run_id].stats.get("rows", 0) > BATCH_SIZE for run_id in succeeded)  # several chunks
    print("expiring-soon kills:", {step: dict(o) for step, o in outcomes.items()}, "as-ofs:", len(per_as_of))


# ── a full disk, a read-only folder ──────────────────────────────────────────

class Disk:
    """A small tmpfs of its own (as root, where mounting is allowed) holding the reports folder: it can
    be filled to leave a given number of bytes free, and turned read-only. Elsewhere, a plain folder:
    a full disk is then a file-size limit of the child (RLIMIT_FSIZE) and read-only a 0555 mode."""

    SIZE = 4 * 1024 * 1024

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.reports = root / "reports"
        self.tmpfs = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.SIZE},mode=0755", "tmpfs", str(root)],
            capture_output=True).returncode == 0
        self.reports.mkdir()

    def leave_free(self, free: int) -> None:
        """Fill the tmpfs until `free` bytes are left."""
        filler = self.root / "filler"
        filler.unlink(missing_ok=True)
        stat = os.statvfs(self.root)
        with open(filler, "wb") as out:
            out.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free))

    def make_room(self) -> None:
        (self.root / "filler").unlink(missing_ok=True)

    def read_only(self) -> None:
        """The reports folder turned read-only (callable in the forked child)."""
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,ro", str(self.root)], check=True)
        else:
            os.chmod(self.reports, 0o555)

    def writable(self) -> None:
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,rw", str(self.root)], check=True)
        else:
            os.chmod(self.reports, 0o755)

    def unmount(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    disk = Disk(tmp_path / "disk")
    if not disk.tmpfs and os.geteuid() == 0:
        disk.unmount()
        pytest.skip("root without the right to mount a tmpfs: neither a small disk nor a 0555 folder stops root")
    yield disk
    disk.unmount()


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _at(target: str, action: Callable[[], None], *, call: int = 1) -> Callable[[], None]:
    """In the child: do `action` as call number `call` of `target` starts."""
    def install() -> None:
        import functools

        holder, name = _resolve(target)
        original = getattr(holder, name)
        calls = []

        @functools.wraps(original)
        def acting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == call:
                action()
            return original(*args, **kwargs)

        setattr(holder, name, acting)
    return install


def _run_cli(disk: Disk, engine: Engine, tmp_path: Path, log_name: str, args: list[str],
             before: Callable[[], None] | None = None) -> tuple[int, str]:
    env = cli_env(engine.url.render_as_string(hide_password=False), tmp_path,
                  REWARDS_REPORTS_DIR=str(disk.reports), REWARDS_BATCH_SIZE=str(BATCH_SIZE))
    child = fork_cli(args, env, tmp_path / log_name, before=before)
    code = child.wait()
    return code, (tmp_path / log_name).read_text()


def _names_the_file(output: str, folder: Path, reason: str) -> str:
    """The line that names the file and why it failed: `cannot write …/NAME: reason`."""
    lines = [line for line in output.splitlines() if f"cannot write {folder}/" in line and reason in line]
    assert lines, f"no line names the file ({reason}):\n{output}"
    return lines[0].split(f"cannot write {folder}/", 1)[1].split(":", 1)[0]


RECONCILE_REPAIR = ["run", "reconcile", "--as-of", "2026-06-01T01:00:00Z", "--repair"]


def test_a_reports_disk_that_fills_up_at_any_file_fails_the_reconcile_naming_it_and_repairs_nothing(
        small_world, engine, tmp_path, disk):
    _drift(engine, random.Random("full"), DRIFTED_PER_TRY)
    before = _cache(engine)
    named: list[str] = []
    for free in ([0, 4096, 8192, 16384, 65536, 98304, 196608, 1048576] if disk.tmpfs
                 else [0, 2000, 8000, 40000, 150000, 4_000_000]):
        limit = None
        if disk.tmpfs:
            disk.leave_free(free)
        else:
            limit = _file_size_limit(free)
        code, output = _run_cli(disk, engine, tmp_path, f"full-{free}.log", RECONCILE_REPAIR, before=limit)
        disk.make_room()
        if code == 0:
            break
        assert code == 1, output
        named.append(_names_the_file(output, disk.reports, "No space left on device" if disk.tmpfs else "File too large"))
        assert _files(disk.reports) == ([], [])  # nothing under a final name, nothing left aside
        assert _cache(engine) == before  # no repair
        assert _recorded_reconciles(engine) == {}
    else:
        pytest.fail("the reconcile never found room")
    assert len(set(named)) >= 3 and named[0].endswith(".csv"), named  # the disk filled at several files
    runs = _runs(engine, "reconcile")
    assert [run.status for run in runs.values()] == ["FAILED"] * len(named) + ["SUCCEEDED"]
    [(run_id, recorded)] = _recorded_reconciles(engine).items()
    assert recorded.repaired == len({user for user, row in _cache(engine).items() if before.get(user) != row})
    assert sorted(_files(disk.reports)[0]) == sorted(
        f"reconciliation-20260601T010000Z-{run_id}{suffix}" for suffix in RECONCILE_SUFFIXES)
    print("full disk: failures named", named)


# (where, the function at whose start the folder turns read-only and which call of it, is the run
# recorded then?). Never while a file is open for writing: the kernel refuses to remount then (busy),
# so a real folder cannot turn read-only in the middle of a file either.
READ_ONLY_AT = [
    ("before the run", None, 0, False),
    ("before the CSV", "core.reports:FileSet.text", 1, False),
    ("before the findings' CSV", "core.reports:FileSet.text", 2, False),
    ("before the documents", "jobs.reconcile_publish:_stage_documents", 1, False),
    ("before the workbook", "core.reports:FileSet.writing", 1, False),
    ("before the seal", "core.reports:FileSet.seal", 1, False),
    ("after the record, before the publication", "core.reports:FileSet.publish", 1, True),
]


def test_a_reports_folder_turning_read_only_at_any_step_leaves_no_file_and_no_unreported_repair(
        small_world, engine, tmp_path, disk):
    for number, (where, target, call, recorded_first) in enumerate(READ_ONLY_AT):
        _drift(engine, random.Random(where), DRIFTED_PER_TRY)
        before = _cache(engine)
        previous = set(_runs(engine, "reconcile"))
        if target is None:
            disk.read_only()
        code, output = _run_cli(disk, engine, tmp_path, f"ro-{number}.log", RECONCILE_REPAIR,
                                before=_at(target, disk.read_only, call=call) if target else None)
        runs = _runs(engine, "reconcile")
        if target is None:  # refused at start (a configuration error), before any run
            assert code == 2 and "REWARDS_REPORTS_DIR" in output and set(runs) == previous, output
            assert _cache(engine) == before
            disk.writable()
            continue
        [run_id] = set(runs) - previous
        final, aside = _files(disk.reports)
        _assert_final_files_only_of_succeeded_runs(disk.reports, runs)
        if recorded_first:  # the run stands, recorded with its repairs; its files wait aside
            assert code == 0 and runs[run_id].status == "SUCCEEDED", output
            assert f"cannot publish {disk.reports}/reconciliation-" in output, output
            after = _cache(engine)
            repaired = {user for user in set(before) | set(after) if before.get(user) != after.get(user)}
            assert _recorded_reconciles(engine)[run_id].repaired == len(repaired) >= DRIFTED_PER_TRY
            assert len([name for name in aside if _run_of(name) == run_id]) == len(RECONCILE_SUFFIXES)
        else:
            assert code == 1 and runs[run_id].status == "FAILED", output
            _names_the_file(output, disk.reports, "Read-only file system" if disk.tmpfs else "Permission denied")
            assert _cache(engine) == before and run_id not in _recorded_reconciles(engine), where
            assert [name for name in final if _run_of(name) == run_id] == []
        disk.writable()

    code, output = _run_cli(disk, engine, tmp_path, "ro-healthy.log", RECONCILE_REPAIR)
    assert code == 0, output
    runs = _runs(engine, "reconcile")
    final, aside = _files(disk.reports)
    assert aside == []
    succeeded = sorted(run_id for run_id, run in runs.items() if run.status == "SUCCEEDED")
    assert sorted({_run_of(name) for name in final}) == succeeded
    assert len(final) == len(RECONCILE_SUFFIXES) * len(succeeded)
    assert [row.repaired for row in _recorded_reconciles(engine).values()] == [len(repaired), 0]


def test_expiring_soon_on_a_full_or_read_only_folder_fails_naming_its_file_or_publishes_it_later(
        small_world, engine, tmp_path, disk):
    args = ["run", "expiring-soon", "--as-of", "2026-06-01"]
    if disk.tmpfs:
        disk.leave_free(0)
    code, output = _run_cli(disk, engine, tmp_path, "full.log", args,
                            before=None if disk.tmpfs else _file_size_limit(0))
    disk.make_room()
    assert code == 1
    assert _names_the_file(output, disk.reports, "No space left on device" if disk.tmpfs else "File too large"
                           ).startswith("expiring-20260601T000000Z-")
    assert _files(disk.reports) == ([], [])

    code, output = _run_cli(disk, engine, tmp_path, "ro.log", args,
                            before=_at("core.reports:FileSet.publish", disk.read_only))
    assert code == 0 and f"cannot publish {disk.reports}/expiring-" in output, output
    disk.writable()
    assert _files(disk.reports)[0] == []
    code, output = _run_cli(disk, engine, tmp_path, "next.log", ["run", "expiring-soon", "--as-of", "2026-06-02"])
    assert code == 0, output
    runs = _runs(engine, "expiring-soon")
    final, aside = _files(disk.reports)
    assert aside == []
    assert sorted(_run_of(name) for name in final) == [run_id for run_id, run in runs.items()
                                                       if run.status == "SUCCEEDED"]
    assert Counter(runs[_run_of(name)].as_of for name in final) == Counter({
        datetime(2026, 6, 1, tzinfo=timezone.utc): 1, datetime(2026, 6, 2, tzinfo=timezone.utc): 1})


def test_a_repair_that_changes_another_number_than_the_snapshot_said_is_reported_as_made(small_world, engine,
                                                                                           make_settings):
    from jobs import reconcile_publish

    _drift(engine, random.Random("meanwhile"), DRIFTED_PER_TRY)
    settings = make_settings(batch_size=BATCH_SIZE)
    real_repair = reconcile_publish._repair
    fixed_meanwhile = []

    def someone_fixes_a_row_first(ctx: Any, conn: Any) -> int:
        with engine.begin() as other:  # committed before the repair locks the rows
            user = other.execute(text("SELECT user_id FROM public.reconciliation_discrepancies WHERE run_id = :r"
                                      " ORDER BY user_id LIMIT 1"), {"r": ctx.run_id}).scalar_one()
            other.execute(text(
                "UPDATE public.user_point_balances b SET balance = l.balance, total_earned = l.earned,"
                " total_spent = l.spent FROM (SELECT sum(delta) AS balance, sum(greatest(delta, 0)) AS earned,"
                " sum(least(delta, 0)) AS spent FROM public.user_point_transactions WHERE user_id = :u) l"
                " WHERE b.user_id = :u"), {"u": user})
        fixed_meanwhile.append(user)
        return real_repair(ctx, conn)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reconcile_publish, "_repair", someone_fixes_a_row_first)
        result = run_job(JOBS["reconcile"], settings=settings, engine=engine, as_of=WORLD_AS_OF, repair=True)

    assert result.status == "SUCCEEDED", result.error
    discrepancies = result.stats["discrepancies"]
    [recorded] = _recorded_reconciles(engine).values()
    assert fixed_meanwhile and recorded.repaired == result.stats["repaired"] == discrepancies - 1
    summary = json.loads(next(settings.reports_dir.glob("reconciliation-*.json")).read_text())
    assert summary["repaired"] == recorded.repaired  # the files were written again with the number made
    assert _files(settings.reports_dir)[1] == []
