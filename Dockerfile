# rewards-jobs: the scheduler daemon. Build: docker build -t rewards-jobs .
FROM python:3.11-slim

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
# The daemon exits within 5 s of SIGTERM, inside `docker stop`'s default 10 s (see README).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REWARDS_HTTP_PORT', '9108'), timeout=8)"]
CMD ["python", "scheduler.py", "daemon"]
