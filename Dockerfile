# One image for the three services of the suite; docker-compose.yml picks the service with
# `command` (python -m order | inventory | shipping). Dependencies come from uv.lock only.
FROM python:3.11-slim

# The uv version the Makefile bootstraps, installed from PyPI like there.
ARG UV_VERSION=0.13.8

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app

# Third-party dependencies first, from the manifests alone, so this layer stays cached
# until uv.lock or a pyproject.toml changes.
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
COPY services/order/pyproject.toml services/order/pyproject.toml
COPY services/inventory/pyproject.toml services/inventory/pyproject.toml
COPY services/shipping/pyproject.toml services/shipping/pyproject.toml
RUN uv sync --frozen --no-dev --no-install-workspace

# Then the workspace itself (sources, Alembic migrations).
COPY shared shared
COPY services services
RUN uv sync --frozen --no-dev

ENV PATH="/app/.venv/bin:${PATH}"

RUN useradd --system --uid 10001 --no-create-home app
USER app

EXPOSE 8001 8002 8003

CMD ["python", "-m", "order"]
