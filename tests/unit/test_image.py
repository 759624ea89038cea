"""The image, checked without Docker (issue 27): it knows its version (baked at build from the VERSION
build argument, which must be pyproject.toml's version), its base image is pinned by digest, it carries
the OCI labels, it runs the daemon as an unprivileged user; and docs/compose.yaml runs that daemon as the
least-privileged role of docs/privileges.sql.

The version bake is the Dockerfile's own RUN step, run by /bin/sh against a fresh venv standing in for
the base image's Python; the rest reads the Dockerfile and the compose file as text (PyYAML is not a
dependency of the project)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docs" / "compose.yaml"
PRIVILEGES = REPO / "docs" / "privileges.sql"


# ── reading the Dockerfile ──────────────────────────────────────────────────────

@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, ARG, RUN, …
    arguments: str  # the rest of the logical line, its backslash continuations joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile as its parser reads them: a line ending in a backslash goes on
    on the next line, and comment lines (even inside a continuation) and blank lines are dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and pending == ""):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        logical, pending = (pending + line).strip(), ""
        if logical:
            keyword, _, arguments = logical.partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert pending == "", "the Dockerfile ends inside a continuation"
    return instructions


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def only(keyword: str) -> Instruction:
    found = [instruction for instruction in dockerfile() if instruction.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} instruction, found {len(found)}"
    return found[0]


def args_before_and_after_from() -> tuple[dict[str, str | None], set[str]]:
    """The global ARGs (before FROM: name → default) and the names the stage declares after FROM."""
    instructions = dockerfile()
    first_from = next(i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM")
    assert [i.keyword for i in instructions].count("FROM") == 1, "one stage expected"
    before: dict[str, str | None] = {}
    for instruction in instructions[:first_from]:
        assert instruction.keyword == "ARG", f"{instruction.keyword} before FROM"
        name, equals, default = instruction.arguments.partition("=")
        before[name] = default if equals else None
    after = {instruction.arguments.partition("=")[0]
             for instruction in instructions[first_from:] if instruction.keyword == "ARG"}
    return before, after


def labels() -> dict[str, str]:
    """The LABEL instruction's key=value pairs, values as written (a ${VAR} left unexpanded)."""
    pairs = [shlex.split(instruction.arguments) for instruction in dockerfile() if instruction.keyword == "LABEL"]
    return dict(token.split("=", 1) for tokens in pairs for token in tokens)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_the_parser_joins_continuations_and_drops_comment_lines_inside_them():
    parsed = parse_dockerfile("# a comment\nFROM x\n\nRUN a \\\n# inside\n && b \\\n && c\nUSER 1\n")

    assert parsed == [Instruction("FROM", "x"), Instruction("RUN", "a  && b  && c"), Instruction("USER", "1")]


# ── 2. the base image ───────────────────────────────────────────────────────────

DIGEST_PINNED_PYTHON = re.compile(r"python:3\.11-slim@sha256:[0-9a-f]{64}")


def test_the_base_image_is_python_3_11_slim_pinned_by_digest():
    global_args, _ = args_before_and_after_from()
    base = only("FROM").arguments

    assert base in ("${BASE_IMAGE}", "$BASE_IMAGE"), "FROM takes the BASE_IMAGE build argument"
    assert DIGEST_PINNED_PYTHON.fullmatch(global_args["BASE_IMAGE"] or "")


@pytest.mark.parametrize("reference", ["python:3.11-slim", "python:3.11-slim@sha256:abc",
                                       "python:3.12-slim@sha256:" + "0" * 64])
def test_a_tag_without_a_full_digest_is_not_taken_for_a_pin(reference):
    assert not DIGEST_PINNED_PYTHON.fullmatch(reference)


# ── 3. the OCI labels ───────────────────────────────────────────────────────────

OCI = "org.opencontainers.image."


def test_the_image_carries_the_oci_labels_with_the_build_arguments():
    found = labels()

    assert found[OCI + "title"] == pyproject()["name"]
    assert found[OCI + "description"].strip()
    assert {OCI + name: found.get(OCI + name) for name in
            ("version", "revision", "created", "source", "base.name")} == {
        OCI + "version": "${VERSION}",
        OCI + "revision": "${REVISION}",
        OCI + "created": "${CREATED}",
        OCI + "source": "${SOURCE}",
        OCI + "base.name": "${BASE_IMAGE}",
    }


def test_every_variable_a_label_names_is_declared_in_the_stage():
    """An ARG declared only before FROM is empty after it: the base.name label would be blank unless the
    stage declares BASE_IMAGE again."""
    _, stage_args = args_before_and_after_from()
    named = {name for value in labels().values() for name in re.findall(r"\$\{?(\w+)", value)}

    assert named and named - stage_args == set()


def test_the_default_version_argument_is_pyprojects_version():
    _, stage_args = args_before_and_after_from()
    defaults = dict(instruction.arguments.partition("=")[::2] for instruction in dockerfile()
                    if instruction.keyword == "ARG")

    assert "VERSION" in stage_args
    assert defaults["VERSION"] == pyproject()["version"]


# ── 4. the user and the command ─────────────────────────────────────────────────

def test_the_image_runs_as_a_non_root_numeric_user_that_owns_data():
    user, _, group = only("USER").arguments.partition(":")
    creates_user = next(instruction.arguments for instruction in dockerfile()
                        if instruction.keyword == "RUN" and "useradd" in instruction.arguments)

    assert user.isdigit() and int(user) != 0
    assert group == "" or (group.isdigit() and int(group) != 0)
    assert re.search(rf"useradd\b.*--uid {user}\b", creates_user), "USER is the user the image creates"
    assert re.search(r"chown -R \S+ /data\b", creates_user), "the reports' volume belongs to it"


def test_the_default_command_is_the_scheduler_daemon():
    command = json.loads(only("CMD").arguments)  # exec form: the daemon is PID 1 and gets SIGTERM
    copied = [instruction.arguments.split() for instruction in dockerfile() if instruction.keyword == "COPY"]

    assert command[-2:] == ["scheduler.py", "daemon"]
    assert command[0] == "python"
    assert "ENTRYPOINT" not in {instruction.keyword for instruction in dockerfile()}
    assert ["scheduler.py", "./"] in copied and only("WORKDIR").arguments == "/app"


# ── 1. the version, baked ───────────────────────────────────────────────────────

def the_version_bake() -> str:
    """The Dockerfile's RUN step that writes the dist-info METADATA, as the shell gets it."""
    steps = [instruction.arguments for instruction in dockerfile()
             if instruction.keyword == "RUN" and instruction.arguments.startswith("declared=")]
    assert len(steps) == 1, "one RUN declared=… step writes the version's METADATA"
    assert "METADATA" in steps[0]
    return steps[0]


@dataclass
class Image:
    """A stand-in for the image's /app and its Python: a fresh venv (no project, no dependencies) and
    a directory holding what the Dockerfile COPYs, with no metadata of the project in it."""
    app: Path
    python_bin: Path
    site_packages: Path

    def environment(self, **extra: str) -> dict[str, str]:
        environment = {name: value for name, value in os.environ.items()
                       if not name.startswith(("PYTHON", "VIRTUAL_ENV", "REWARDS_"))}
        environment["PATH"] = f"{self.python_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        return environment | extra

    def sh(self, script: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/sh", "-c", script], cwd=self.app, env=self.environment(**env),
                              capture_output=True, text=True, timeout=60)

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python_bin / "python"), *args], cwd=self.app, env=self.environment(),
                              capture_output=True, text=True, timeout=60)

    def dist_infos(self) -> list[Path]:
        return sorted(self.site_packages.glob("rewards_jobs-*.dist-info"))


@pytest.fixture
def image(tmp_path: Path) -> Image:
    if not Path("/bin/sh").exists():
        pytest.skip("no /bin/sh to run the Dockerfile's RUN step with")
    environment = tmp_path / "python"
    venv.EnvBuilder(with_pip=False).create(environment)
    python_bin = environment / "bin"
    site_packages = Path(subprocess.run(
        [str(python_bin / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())

    app = tmp_path / "app"  # WORKDIR /app, filled as the COPY instructions fill it
    app.mkdir()
    for instruction in dockerfile():
        if instruction.keyword != "COPY":
            continue
        *sources, destination = instruction.arguments.split()
        assert not any(source.startswith("--") for source in sources), instruction
        for source in sources:
            origin, target = REPO / source, app / destination
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    assert (app / "pyproject.toml").is_file() and (app / "scheduler.py").is_file()
    return Image(app, python_bin, site_packages)


def test_without_the_bake_the_stand_in_knows_no_version(image):
    """The control: nothing but the bake can give the stand-in a version (not the repository's
    rewards_jobs.egg-info, not the development venv's metadata)."""
    shown = image.python("scheduler.py", "--version")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("rewards-jobs unknown")
    assert image.dist_infos() == []


@pytest.mark.parametrize("local", ["", "+gabc123"], ids=["release", "local-version"])
def test_the_bake_makes_version_report_the_build_argument(image, local):
    version = pyproject()["version"] + local

    baked = image.sh(the_version_bake(), VERSION=version)

    assert baked.returncode == 0, baked.stderr
    [dist_info] = image.dist_infos()  # in the Python that runs the app, one file and nothing else
    assert [path.name for path in dist_info.iterdir()] == ["METADATA"]
    assert image.python("scheduler.py", "--version").stdout == f"rewards-jobs {version}\n"
    read = image.python("-c", "from importlib.metadata import version; print(version('rewards-jobs'))")
    assert read.stdout == f"{version}\n"


@pytest.mark.parametrize("wrong", ["99.0.0", "{declared}.dev1", "v{declared}", ""])
def test_a_version_that_is_not_pyprojects_stops_the_build(image, wrong):
    declared = pyproject()["version"]
    version = wrong.format(declared=declared)

    baked = image.sh(the_version_bake(), VERSION=version)

    assert baked.returncode != 0
    assert f"VERSION={version} is not pyproject.toml's version {declared}" in baked.stderr
    assert image.dist_infos() == []


@pytest.mark.parametrize("local", ["+", "+a/b", "+g1..2", "+.g1", "+g_1"])
def test_a_local_part_that_is_no_version_stops_the_build(image, local):
    version = pyproject()["version"] + local

    baked = image.sh(the_version_bake(), VERSION=version)

    assert baked.returncode != 0
    assert f"VERSION={version}: the local part after + must be letters and digits" in baked.stderr
    assert image.dist_infos() == []


# ── 5. compose runs the daemon as the least-privileged role ─────────────────────

def compose_services(text: str) -> dict[str, str]:
    """The services of a compose file, each as the text of its block: a name at two spaces' indent
    under `services:`, then every deeper or blank line (a careful read of this file's layout, in
    place of a YAML parser the project does not depend on)."""
    services: dict[str, list[str]] = {}
    current: list[str] | None = None
    inside = False
    for line in text.splitlines():
        if re.match(r"\S", line) and not line.startswith("#"):
            inside, current = line.rstrip() == "services:", None
            continue
        if not inside:
            continue
        named = re.match(r"  ([\w.-]+):\s*$", line)
        if named:
            current = services.setdefault(named.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in services.items()}


def environment_value(block: str, name: str) -> str | None:
    found = re.findall(rf"^\s+(?:-\s*)?{name}\s*[:=]\s*(.+?)\s*$", block, flags=re.M)
    assert len(found) <= 1, f"{name} is set twice"
    return found[0].strip("\"'") if found else None


def url_user(url: str) -> str | None:
    """The user of a database URL as compose passes it: each ${VAR:-default} first becomes its default."""
    interpolated = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda match: match.group(1) or "", url)
    return urlsplit(interpolated).username


def daemon_service(services: dict[str, str]) -> tuple[str, str]:
    """The service that runs the image's CMD (the daemon): built from the image, no command of its own."""
    runs_image = {name: block for name, block in services.items() if re.search(r"^\s+<<: \*rewards-jobs\b", block, re.M)}
    daemons = [(name, block) for name, block in runs_image.items()
               if all("daemon" in command for command in re.findall(r"^    command:(.*)$", block, re.M))]
    assert len(daemons) == 1, f"one daemon service expected among {sorted(runs_image)}"
    return daemons[0]


def privileges_sql() -> str:
    """docs/privileges.sql without its comments (they name roles and CREATE ROLE in prose)."""
    return re.sub(r"--[^\n]*", "", PRIVILEGES.read_text(encoding="utf-8"))


def service_role() -> str:
    """The role docs/privileges.sql creates: the service's, the least privileged (the other, the tables'
    owner, is the migrations')."""
    created = re.findall(r"CREATE ROLE (\w+)([^;]*);", privileges_sql())
    assert len(created) == 1, created
    role, attributes = created[0]
    assert set(attributes.upper().split()) <= {"LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE",
                                               "NOBYPASSRLS", "NOREPLICATION", "NOINHERIT", "INHERIT"}
    return role


def test_the_service_role_of_privileges_sql_cannot_change_the_schema_or_erase_rows():
    role = service_role()
    grants = re.findall(rf"GRANT\s+(.*?)\s+TO\s+{role}\b", privileges_sql(), flags=re.S | re.I)
    # The ledger writer's staging table on Citus (migration 028) holds nothing past a transaction: each batch
    # deletes its own uncommitted rows there, and no committed row exists to erase.
    staging = [grant for grant in grants if re.search(r"\bON\s+public\.rewards_ledger_staging\b", grant, re.I)]
    granted = " ".join(grant for grant in grants if grant not in staging).upper()

    assert grants
    assert not re.search(r"\b(ALL|CREATE|DELETE|TRUNCATE|REFERENCES|TRIGGER)\b", granted)
    assert all(" ON " in f" {grant.upper()} " for grant in grants), "no membership in another role"
    assert [re.sub(r"\s+", " ", grant) for grant in staging] == ["SELECT, INSERT, DELETE ON public.rewards_ledger_staging"]


def test_compose_runs_the_daemon_as_the_least_privileged_role():
    services = compose_services(COMPOSE.read_text(encoding="utf-8"))
    name, block = daemon_service(services)
    role = service_role()

    user = url_user(environment_value(block, "DATABASE_URL") or "")

    assert user == role != "postgres"
    assert user != url_user(environment_value(services["migrate"], "DATABASE_URL") or ""), \
        "the migrations' owner is not the daemon's role"
    assert not re.search(r"^    user:\s*[\"']?(0|root)\b", block, re.M), f"{name} keeps the image's user"
    assert re.search(rf"ALTER ROLE {role} PASSWORD", services["grant"]), "the grant step sets that role's password"


def test_the_compose_reading_finds_each_service_and_its_user():
    text = ("x: &a\n  build: ..\nservices:\n  db:\n    image: postgres\n  app:\n    <<: *rewards-jobs\n"
            "    environment:\n      DATABASE_URL: postgresql://svc:${PW:-p@ss}@db:5432/x\n\nvolumes:\n  data:\n")
    services = compose_services(text)

    assert sorted(services) == ["app", "db"]
    assert url_user(environment_value(services["app"], "DATABASE_URL") or "") == "svc"
    assert url_user("postgresql://postgres:${OWNER_PASSWORD:-rewards}@postgres:5432/postgres") == "postgres"
