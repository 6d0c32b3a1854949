# The chronos image: one image for every role (api, scheduler, worker, migrate, serve); the command picks.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chronos_core ./chronos_core
COPY chronos_adapters ./chronos_adapters
COPY chronos_app ./chronos_app
RUN pip install '.[mysql,kafka]'
COPY docker/healthcheck.py ./docker/healthcheck.py

# jobs (shell commands) run as this unprivileged user
RUN useradd --create-home --uid 10001 chronos
USER chronos

EXPOSE 8080
CMD ["chronos", "serve", "--host", "0.0.0.0", "--port", "8080"]
