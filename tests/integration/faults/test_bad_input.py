"""Bad input through the real command line (issue 28, items 2 and 5), with a canary password in
DATABASE_URL: a `.env` in other encodings, DATABASE_URLs libpq refuses, a bad value for every setting,
REWARDS_ names that are not settings, and as-ofs outside 1900-2200 for every command that takes one.
Each must end with exit code 2 and one line naming the variable or argument, no traceback, and the
canary nowhere: not on stdout or stderr (JSON logs, and console logs at DEBUG), not in any table, not
in any file written. Then real runs (one failing) with the canary URL, checked the same way."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from annotated_types import Ge, Gt, Le
from sqlalchemy import text
from sqlalchemy.engine import make_url

from cli import sample_data
from core.db import make_engine
from jobs import NAMES, PipelineSettings
from tests.integration.faults.conftest import WORLD_AS_OF

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CANARY = "s3cr3t-CANARY-p4ss"
MARK = b"CANARY"  # any piece of the password that shows is a leak
ELSEWHERE = f"postgresql://rewards:{CANARY}@db.invalid:5432/rewards"  # refused before any connection
USER = "00000000-0000-4000-8000-000000000001"


@dataclass(frozen=True)
class BadInput:
    """A command, its environment (bytes: a value that is not UTF-8) and `.env` (bytes, or None for
    none), and what its one line must start with after `error: `."""

    args: tuple[str, ...]
    says: str
    env: dict[str, str | bytes] = field(default_factory=dict)
    dot_env: bytes | None = None
    kind: str = ""


@dataclass
class Outcome:
    bad: BadInput
    code: int | None
    out: bytes
    err: bytes

    def problems(self) -> list[str]:
        found = []
        if self.code != 2:
            found.append(f"exit {self.code}")
        if b"Traceback" in self.out + self.err:
            found.append("a traceback")
        if MARK in self.out + self.err:
            found.append("the canary")
        lines = self.err.decode(errors="replace").splitlines()
        if self.out or len(lines) != 1 or not lines[0].startswith("error: " + self.bad.says):
            found.append(f"not one line saying {self.bad.says!r}")
        return found


# ── the inputs, generated ─────────────────────────────────────────────────────

COMMANDS = (("run", "expire-pending"), ("run-all",), ("daemon",), ("health",), ("jobs",), ("migrate",),
            ("history",), ("run", "reconcile"), ("explain", USER))


def dot_env_inputs(url: str) -> list[BadInput]:
    """`.env` files that are not UTF-8, the canary URL in each; on every command."""
    good = f"DATABASE_URL={url}\n".encode()
    files = {
        "DATABASE_URL (.env line 1)": f"DATABASE_URL={url}".replace(CANARY, CANARY + "é").encode("latin-1") + b"\n",
        "REWARDS_REPORTS_DIR (.env line 2)": good + "REWARDS_REPORTS_DIR=rapports-été\n".encode("cp1252"),
        ".env line 3": good + b"REWARDS_BATCH_SIZE=10\n# \xff\xfe comment\n",
        "REWARDS_LOG_LEVEL (.env line 2)": good + b"REWARDS_LOG_LEVEL=INFO\xc3",  # cut in a character
        ".env line 1": "# 設定\n".encode("shift_jis") + good,
        ".env: is UTF-16": ("\ufeff" + good.decode()).encode("utf-16-le"),
        ".env: is UTF-16 ": ("\ufeff" + good.decode()).encode("utf-16-be"),
        ".env: is UTF-32": ("\ufeff" + good.decode()).encode("utf-32-le"),
    }
    return [BadInput(command, says.strip(), dot_env=content, kind=".env encoding")
            for says, content in files.items() for command in COMMANDS]


def database_url_inputs() -> list[BadInput]:
    """DATABASE_URLs libpq would refuse, each with the canary password; on three commands."""
    def query(text: str) -> str:
        return f"{ELSEWHERE}?{text}"

    urls: dict[str, str | bytes] = {
        "port 99999 is out of range": ELSEWHERE.replace(":5432", ":99999"),
        "port 0 is out of range": ELSEWHERE.replace(":5432", ":0"),
        "port 65536 is out of range": ELSEWHERE.replace(":5432", ":65536"),
        "port is out of range": ELSEWHERE.replace(":5432", ":-1"),
        "must be a URL like": ELSEWHERE.replace(":5432", ":abc"),
        "port 70000 is out of range": query("port=70000"),
        "sslmode='bogus' is not one of": query("sslmode=bogus"),
        "gssencmode='x' is not one of": query("gssencmode=x"),
        "channel_binding='x' is not one of": query("channel_binding=x"),
        "target_session_attrs='x' is not one of": query("target_session_attrs=x"),
        "load_balance_hosts='x' is not one of": query("load_balance_hosts=x"),
        "sslcertmode='x' is not one of": query("sslcertmode=x"),
        "connect_timeout must be a whole number": query("connect_timeout=abc"),
        "connect_timeout must be a whole number ": query("connect_timeout=1.5"),
        "keepalives must be a whole number": query("keepalives=yes"),
        "tcp_user_timeout must be a whole number": query("tcp_user_timeout=1e3"),
        "unknown connection option 'sslmod'": query("sslmod=require"),
        "its password has a %-escape that is not UTF-8": ELSEWHERE.replace(CANARY, CANARY + "%FF"),
        "its user name has a %-escape that is not UTF-8": ELSEWHERE.replace("rewards:", "rew%C3:"),
        "its database name has a %-escape that is not UTF-8": ELSEWHERE + "%FE",
        "is not UTF-8 text": ELSEWHERE.replace(CANARY, CANARY + "\udcff").encode("utf-8", "surrogateescape"),
        "must be a postgresql:// URL": ELSEWHERE.replace("postgresql:", "mysql:"),
        "must be a postgresql:// URL ": ELSEWHERE.replace("postgresql:", "postgresql+asyncpg:"),
        "must be a URL like ": f"{CANARY} is not a URL",
        "has an unescaped '@'": ELSEWHERE.replace(CANARY, CANARY[:6] + "@" + CANARY[6:]),
        "require_auth='sometimes' is not a list": query("require_auth=sometimes"),
        "ssl_min_protocol_version='TLSv9' is not one of": query("ssl_min_protocol_version=TLSv9"),
        "number of hosts and ports don't match": query("port=5432,5433"),  # SQLAlchemy's reading
    }
    # refused by libpq itself when it connects, before any server is asked (a daemon waits on these)
    at_connect = {
        "could not parse network address": query("hostaddr=999.1.1.1"),
    }
    return [BadInput(command, "DATABASE_URL: " + says.strip(), env={"DATABASE_URL": url}, kind="DATABASE_URL")
            for says, url in urls.items() for command in (("health",), ("run", "expire-points"), ("daemon",))] + [
        BadInput(command, "DATABASE_URL: " + says, env={"DATABASE_URL": url}, kind="DATABASE_URL")
        for says, url in at_connect.items() for command in (("health",), ("run", "expire-points"), ("migrate",))]


# Settings whose bad values are not told by their type and bounds.
SPECIAL_BAD_VALUES = {
    "recurring_reward": ("101%", "ten", "-5", "2.5", "3000000000"),
    "l2_reward": ("-1%", "5 %", ""),
    "payments_table": ("a.b.c", "payments; DROP TABLE public.user_point_transactions", ""),
    "log_format": ("xml",),
    "log_level": ("LOUD",),
    "http_host": ("not a host", ""),
    "recovery": ("sometimes",),
    "data_dir": ("",),
    "reports_dir": ("",),
    "points_per_usd": ("NaN", "lots", "-1"),
    "database_url": (),
}


def bad_values(name: str, info: Any) -> tuple[str, ...]:
    """Values the field's type or bounds refuse: not a number, a fraction, just outside each bound."""
    if name in SPECIAL_BAD_VALUES:
        return SPECIAL_BAD_VALUES[name]
    if name.startswith("schedule_"):
        return ("61 * * * *", "0 0 31 2 *", "daily")
    if info.annotation is bool:
        return ("maybe",)
    values = ["x"]
    for bound in info.metadata:
        if isinstance(bound, Ge):
            values.append(str(bound.ge - 1))
        elif isinstance(bound, Gt):
            values.append(str(bound.gt))
        elif isinstance(bound, Le):
            values.append(str(bound.le + 1))
    if info.annotation is int:
        values.append("1.5")
    else:
        values += ["nan", "inf"]
    return tuple(values)


def setting_inputs(url: str) -> list[BadInput]:
    """A bad value for every setting (in the environment, or in `.env` for every fourth), the canary URL
    to the test database beside it; the commands taken in turn."""
    inputs = []
    for name, info in PipelineSettings.model_fields.items():
        variable = "REWARDS_" + name.upper()
        for value in bad_values(name, info):
            command = COMMANDS[len(inputs) % len(COMMANDS)]
            if len(inputs) % 4 == 3:
                inputs.append(BadInput(command, f"{variable}: ", dot_env=f"{variable}={value}\n".encode(),
                                       env={"DATABASE_URL": url}, kind="setting"))
            else:
                inputs.append(BadInput(command, f"{variable}: ", env={"DATABASE_URL": url, variable: value},
                                       kind="setting"))
    return inputs


def unknown_name_inputs(url: str) -> list[BadInput]:
    names = {
        "REWARDS_BATCHSIZE": "did you mean REWARDS_BATCH_SIZE?",
        "rewards_log_levle": "did you mean REWARDS_LOG_LEVEL?",
        "REWARDS_SCHEDULE_EXPIRE_SOON": "did you mean REWARDS_SCHEDULE_EXPIRING_SOON?",
        "REWARDS_SCHEDULE_PAYOUTS": "there is no job payouts",
        "REWARDS_DATABASE_URL": "did you mean DATABASE_URL?",
        "REWARDS_POINT_EXPIRY_MONTHS": "did you mean REWARDS_POINTS_EXPIRY_MONTHS?",
    }
    inputs = []
    for index, (name, hint) in enumerate(names.items()):
        command = COMMANDS[index % len(COMMANDS)]
        inputs.append(BadInput(command, f"{name} is not a setting; {hint}", env={"DATABASE_URL": url, name: url},
                               kind="unknown name"))
        inputs.append(BadInput(command, f"{name} (in .env) is not a setting; {hint}", env={"DATABASE_URL": url},
                               dot_env=f"{name}={url}\n".encode(), kind="unknown name"))
    return inputs


def as_of_inputs(url: str) -> list[BadInput]:
    """As-ofs outside 1900-2200, and garbage, for every command that takes --as-of (or --since)."""
    env = {"DATABASE_URL": url}
    inputs = []
    for job in NAMES:
        for when in ("9999-01-01", "2201-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", "1899-12-31", "0001-01-01"):
            inputs.append(BadInput(("run", job, "--as-of", when, "--allow-future"), "--as-of: ", env, kind="as-of"))
        inputs.append(BadInput(("run", job, "--as-of", "2026-02-30"), "--as-of: ", env, kind="as-of"))
    for when in ("9999-01-01", "1899-12-31T23:00:00Z", "yesterday"):
        inputs.append(BadInput(("run-all", "--as-of", when, "--allow-future", "--dry-run"), "--as-of: ", env,
                               kind="as-of"))
        inputs.append(BadInput(("explain", USER, "--as-of", when), "--as-of: ", env, kind="as-of"))
        inputs.append(BadInput(("history", "--since", when), "--since: ", env, kind="as-of"))
    return inputs


def reaching_database_inputs(url: str, tmp_path: Path) -> list[BadInput]:
    """Refused only once the database is read, or the folder tried."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    return [
        BadInput(("run", "recurring-rewards"), "REWARDS_PAYMENTS_TABLE: no table or view named public.no_such_feed",
                 {"DATABASE_URL": url, "REWARDS_PAYMENTS_TABLE": "public.no_such_feed"}, kind="database"),
        BadInput(("run", "reconcile"), "REWARDS_REPORTS_DIR: ",
                 {"DATABASE_URL": url, "REWARDS_REPORTS_DIR": str(a_file)}, kind="database"),
        BadInput(("run", "expiring-soon"), "REWARDS_REPORTS_DIR: ",
                 {"DATABASE_URL": url, "REWARDS_REPORTS_DIR": str(a_file / "reports")}, kind="database"),
    ]


# ── running them ──────────────────────────────────────────────────────────────

@pytest.fixture
def canary_url(database_url: str) -> str:
    """The test database's URL with the canary as its password (the test servers trust their users)."""
    url = make_url(database_url).set(password=CANARY).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect():
            pass
    except Exception as error:  # a server that checks passwords
        pytest.skip(f"the test server does not take the canary password: {type(error).__name__}")
    finally:
        engine.dispose()
    return url


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REWARDS_")
           and k not in ("DATABASE_URL", "PGOPTIONS", "PGPASSWORD")}
    env.update({"REWARDS_REPORTS_DIR": str(tmp_path / "reports"), "REWARDS_DATA_DIR": str(tmp_path / "data"),
                "REWARDS_HTTP_PORT": "0", "REWARDS_EMBEDDED": "false"})
    return env


def log_format(index: int) -> dict[str, str]:
    """JSON logs at INFO, or console logs at DEBUG (the traceback of an unexpected error), in turn."""
    return {"REWARDS_LOG_FORMAT": "json"} if index % 2 == 0 else {"REWARDS_LOG_FORMAT": "console",
                                                                  "REWARDS_LOG_LEVEL": "DEBUG"}


def run_cli(args: tuple[str, ...], env: dict[str, Any], cwd: Path,
            timeout: float = 60) -> tuple[int | None, bytes, bytes]:
    """`scheduler.py ARGS`; a daemon that is not refused is stopped after `timeout` (exit None)."""
    process = subprocess.Popen([sys.executable, str(REPO / "scheduler.py"), *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        return None, out, err


_DOT_ENV_NAME = re.compile(rb"^(REWARDS_\w+)=", re.M)


def feed(bad: BadInput, index: int, tmp_path: Path) -> Outcome:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    dot_env = cwd / ".env"
    dot_env.unlink(missing_ok=True)
    if bad.dot_env is not None:
        dot_env.write_bytes(bad.dot_env)
    env: dict[str, Any] = {**base_env(tmp_path), **log_format(index), **bad.env}
    for name in _DOT_ENV_NAME.findall(bad.dot_env or b""):  # the environment would win over .env
        env.pop(name.decode(), None)
    code, out, err = run_cli(bad.args, env, cwd, timeout=30)
    return Outcome(bad, code, out, err)


def canary_in_tables(url: str) -> list[str]:
    """Every table of the public schema, each row as JSON text, searched for the canary."""
    engine = make_engine(url)
    found = []
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT quote_ident(table_name) FROM information_schema.tables "
                                   "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")).scalars().all()
        for table in tables:
            hits = conn.execute(text(f"SELECT count(*) FROM public.{table} t WHERE row_to_json(t)::text LIKE :mark"),
                                {"mark": f"%{MARK.decode()}%"}).scalar_one()
            if hits:
                found.append(f"{table}: {hits} row(s)")
    engine.dispose()
    assert len(tables) > 10  # the search did see the schema
    return found


def canary_in_files(root: Path, *, but: str = ".env") -> list[str]:
    """Files under `root` (reports, data, the working folder) holding the canary, but `.env` itself."""
    return [str(path) for path in root.rglob("*")
            if path.is_file() and path.name != but and MARK in path.read_bytes()]


def test_the_searches_find_the_canary_where_it_is(canary_url, tmp_path):
    (tmp_path / ".env").write_text(f"DATABASE_URL={canary_url}\n")
    engine = make_engine(canary_url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE public.canary_probe (note text)"))
        conn.execute(text("INSERT INTO public.canary_probe VALUES (:url)"), {"url": canary_url})
    engine.dispose()

    assert canary_in_files(tmp_path, but="") == [str(tmp_path / ".env")]
    assert canary_in_tables(canary_url) == ["canary_probe: 1 row(s)"]


def test_a_hundred_and_more_bad_inputs_exit_2_in_one_line_and_the_password_shows_nowhere(canary_url, tmp_path):
    inputs = (dot_env_inputs(canary_url) + database_url_inputs() + setting_inputs(canary_url)
              + unknown_name_inputs(canary_url) + as_of_inputs(canary_url)
              + reaching_database_inputs(canary_url, tmp_path))

    outcomes = [feed(bad, index, tmp_path) for index, bad in enumerate(inputs)]

    failures = [f"{outcome.bad.args} env={sorted(outcome.bad.env)} .env={outcome.bad.dot_env!r}: "
                f"{', '.join(outcome.problems())}; stderr {outcome.err[-300:]!r}"
                for outcome in outcomes if outcome.problems()]
    assert failures == [], "\n".join(failures)
    kinds = Counter(bad.kind for bad in inputs)
    print(f"\n{len(inputs)} bad inputs, every one exit 2 in one line, 0 canary hits: {dict(kinds)}")
    assert len(inputs) >= 100 and len(kinds) == 6
    assert canary_in_tables(canary_url) == []
    assert canary_in_files(tmp_path) == []


# ── real runs with the canary URL: logs, tables and files ──────────────────────

def _freeze_relationships(url: str) -> None:
    """Make every UPDATE of a relationship fail, so that expire-pending fails (its error recorded)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'relationships are frozen'; END $$;"
            " CREATE TRIGGER frozen BEFORE UPDATE ON public.user_referral_relationships"
            " FOR EACH ROW EXECUTE FUNCTION public.refuse();"))
    engine.dispose()


def _daemon_for_a_while(env: dict[str, str], cwd: Path, seconds: float) -> tuple[int | None, bytes, bytes]:
    process = subprocess.Popen([sys.executable, str(REPO / "scheduler.py"), "daemon"], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(seconds)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.fixture
def world_url(canary_url: str) -> Iterator[str]:
    engine = make_engine(canary_url, pool_size=1)
    sample_data.generate(engine, users=200, as_of=WORLD_AS_OF)
    engine.dispose()
    yield canary_url


def test_runs_with_the_canary_url_leave_it_in_no_log_table_or_file(world_url, tmp_path):
    """Every job for real (reports written), a run far ahead at the last year accepted, a failed run
    (its error recorded), the daemon a few seconds: JSON and console logs at DEBUG."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text(f"DATABASE_URL={world_url}\n")  # from .env, as ops may give it
    outputs = []
    for index in (0, 1):
        env = {**base_env(tmp_path), **log_format(index)}
        outputs.append(run_cli(("run-all", "--as-of", f"2026-06-0{index + 1}"), env, cwd))
        outputs.append(run_cli(("history",), env, cwd))
        outputs.append(run_cli(("report", "--format", "html", "--output", str(tmp_path / f"report-{index}.html")),
                               env, cwd))
    late = {**base_env(tmp_path), **log_format(1)}
    for job in ("expiring-soon", "reconcile"):  # year 9999 crashed these; 2200 is the last year accepted
        outputs.append(run_cli(("run", job, "--as-of", "2200-12-31T23:59:59Z", "--allow-future"), late, cwd))
    assert [code for code, _, _ in outputs] == [0] * len(outputs), [err[-500:] for _, _, err in outputs]

    _freeze_relationships(world_url)
    failed = run_cli(("run", "expire-pending", "--as-of", "2027-06-01", "--allow-future"), late, cwd)
    daemon = _daemon_for_a_while({**late, "REWARDS_SCHEDULE_EXPIRE_PENDING": "* * * * * *"}, cwd, seconds=4)

    assert failed[0] == 1
    assert b"relationships are frozen" in failed[2]  # the failure was logged, with its error
    assert daemon[0] == 0 and b"daemon" in daemon[2].lower()
    for code, out, err in [*outputs, failed, daemon]:
        assert MARK not in out + err
    assert canary_in_tables(world_url) == []
    assert list((tmp_path / "reports").glob("reconciliation-*.json"))  # the reports were written
    assert canary_in_files(tmp_path) == []
