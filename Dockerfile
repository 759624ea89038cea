# rewards-jobs: the scheduler daemon. Build: docker build -t rewards-jobs .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned runtime dependencies only (no test tools); their layer is reused while the lock is unchanged.
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# An unprivileged user; /data holds the reports (mount a volume on /data/reports).
RUN groupadd --system --gid 10001 rewards \
 && useradd --system --no-log-init --uid 10001 --gid rewards --home-dir /data --shell /usr/sbin/nologin rewards \
 && mkdir -p /data/reports \
 && chown -R rewards:rewards /data

COPY scheduler.py ./
COPY core/ core/
COPY jobs/ jobs/
COPY migrations/ migrations/

# In the container the database is DATABASE_URL's, never an embedded one: without it the daemon
# stops with exit code 2. Logs are JSON lines.
ENV REWARDS_EMBEDDED=false \
    REWARDS_LOG_FORMAT=json \
    REWARDS_HTTP_PORT=9108 \
    REWARDS_REPORTS_DIR=/data/reports \
    REWARDS_DATA_DIR=/data/embedded

USER 10001:10001
EXPOSE 9108
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=15s --start-period=20s --retries=3 \
    CMD ["python", "scheduler.py", "health"]
CMD ["python", "scheduler.py", "daemon"]
