# rewards-jobs: the scheduler daemon. Build (the labels' revision, date and source are optional):
#   docker build -t rewards-jobs --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" --build-arg SOURCE=<repository URL> .
#
# The base image is pinned by digest: the multi-arch index of python:3.11-slim (Debian trixie,
# Python 3.11.16, pushed 2026-08-16). It was not resolved on the machine that wrote this line (no
# registry access there) but read from public Dockerfiles and build logs that resolved it in August
# 2026; a wrong digest fails the pull, it can never give another image. To move it, resolve the tag
# deliberately and review the bump like a dependency's:
#   docker buildx imagetools inspect python:3.11-slim     # the "Digest:" line
#   docker build --build-arg BASE_IMAGE=python:3.11-slim@sha256:<digest> …   # or edit the default
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE_IMAGE}
ARG BASE_IMAGE

# The version this image reports (`python scheduler.py --version`); it must be pyproject.toml's
# version, optionally with a local part (`0.1.0+g06e8381`); the build stops when it is not.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="rewards-jobs" \
      org.opencontainers.image.description="Scheduled batch jobs of the referral program and points economy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned, hash-checked runtime dependencies only (no test tools, no embedded PostgreSQL); their layer
# is reused while the lock is unchanged. Regenerate the lock with the command in its header.
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# An unprivileged user; /data holds the reports (mount a volume on /data/reports).
RUN groupadd --system --gid 10001 rewards \
 && useradd --system --no-log-init --uid 10001 --gid rewards --home-dir /data --shell /usr/sbin/nologin rewards \
 && mkdir -p /data/reports \
 && chown -R rewards:rewards /data

# The version, baked: the project runs from /app and is not pip-installed, so the package metadata
# `--version` reads (importlib.metadata) is written here, one METADATA file and nothing else.
COPY pyproject.toml ./
RUN declared="$(python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')" \
 && if [ "${VERSION%%+*}" != "$declared" ]; then \
      echo "VERSION=${VERSION} is not pyproject.toml's version ${declared} (a local part +… may follow it)" >&2; exit 1; \
    fi \
 && case "$VERSION" in *+*) \
      case "${VERSION#*+}" in ""|.*|*.|*..*|*[!A-Za-z0-9.]*) \
        echo "VERSION=${VERSION}: the local part after + must be letters and digits, dot-separated (PEP 440)" >&2; exit 1 ;; \
      esac ;; \
    esac \
 && info="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rewards_jobs-${VERSION}.dist-info" \
 && mkdir "$info" \
 && printf 'Metadata-Version: 2.1\nName: rewards-jobs\nVersion: %s\n' "$VERSION" > "$info/METADATA" \
 && test "$(python -c 'from importlib.metadata import version; print(version("rewards-jobs"))')" = "$VERSION"

COPY scheduler.py ./
COPY cli/ cli/
COPY core/ core/
COPY jobs/ jobs/
COPY migrations/ migrations/

# In the container the database is DATABASE_URL's, never an embedded one: without it the daemon
# stops with exit code 2. Logs are JSON lines. /healthz and /metrics listen on every interface of the
# container (the daemon's default outside a container is 127.0.0.1).
ENV REWARDS_EMBEDDED=false \
    REWARDS_HTTP_HOST=0.0.0.0 \
    REWARDS_LOG_FORMAT=json \
    REWARDS_HTTP_PORT=9108 \
    REWARDS_REPORTS_DIR=/data/reports \
    REWARDS_DATA_DIR=/data/embedded

USER 10001:10001
EXPOSE 9108
STOPSIGNAL SIGTERM
# The daemon's own /healthz: it fails when the scheduler loop is stuck, not only when the database is.
# After SIGTERM the process is gone within 5 s (a busy statement cancelled at 2 s, the process ended at
# 3.5 s: core/stopping.py), inside `docker stop`'s default 10 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REWARDS_HTTP_PORT', '9108'), timeout=8)"]
CMD ["python", "scheduler.py", "daemon"]
