# jobq: one image for the API (`serve`, the default), the worker (`worker`) and the one-shot
# migration (`migrate`). It needs DATABASE_URL: the embedded PostgreSQL (extra `embedded`) is
# left out. Two stages: the first installs jobq into a virtualenv, the second gets only the
# virtualenv, runs as an unprivileged user and checks its own health with `jobq health`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN python -m venv /opt/venv
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY service ./service
COPY workers ./workers
COPY jobq ./jobq
COPY migrations ./migrations
# A plain install: the code, the dashboard and the migrations (as service.db.migrations, see
# pyproject.toml) all go into the virtualenv, compiled, so the next stage needs nothing else.
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin jobq
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JOBQ_HOST=0.0.0.0 \
    JOBQ_PORT=8000
# Numeric, so an orchestrator can tell it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# Probes the API's /health. A worker container has no API: disable it there (compose.yaml does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["jobq", "health"]
ENTRYPOINT ["jobq"]
CMD ["serve"]
