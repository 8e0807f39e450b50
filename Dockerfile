# Production image of the Daily Aggregator gRPC service.
#
#   docker build -t daily-aggregator .
#   docker run -p 50051:50051 \
#       -e DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DB daily-aggregator
#
# docker-compose.yml runs it next to a PostgreSQL container.

FROM python:3.11-slim AS build

# uv comes from PyPI through pip, which works wherever pip does (also behind proxies that
# cannot reach the uv image registry). Pinned so that the image reads uv.lock the same way.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# Use the image's own Python, never a downloaded one: the runtime stage has the same
# interpreter at the same path, so the virtual environment works after the copy.
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1

WORKDIR /app

# Dependencies first, so that this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the sources that make up the `daily_aggregator` package (see package-dir in
# pyproject.toml), installed as a regular wheel rather than a link to /app.
COPY generated ./generated
COPY server ./server
COPY client ./client
COPY sql ./sql
RUN uv sync --frozen --no-dev --no-editable


FROM python:3.11-slim

RUN useradd --system --user-group --uid 10001 --create-home --home-dir /home/aggregator \
        --shell /usr/sbin/nologin aggregator

# Owned by root and read-only to the service user.
COPY --from=build /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAILY_AGGREGATOR_LISTEN=0.0.0.0:50051

# Numeric, so that orchestrators can verify the user is not root.
USER 10001:10001
WORKDIR /home/aggregator

EXPOSE 50051

# grpc.health.v1 Check of the overall service "" on the port DAILY_AGGREGATOR_LISTEN names;
# exits 1 unless SERVING (an RPC error exits 1 with its traceback in the health log).
# The proxy is disabled so that HTTP(S)_PROXY set in the container cannot divert it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc as pb_grpc; port = os.environ.get('DAILY_AGGREGATOR_LISTEN', '').rpartition(':')[2] or '50051'; channel = grpc.insecure_channel('127.0.0.1:' + port, options=[('grpc.enable_http_proxy', 0)]); reply = pb_grpc.HealthStub(channel).Check(pb.HealthCheckRequest(service=''), timeout=4); sys.exit(0 if reply.status == pb.HealthCheckResponse.SERVING else 1)"]

# Exec form: the service is PID 1 and receives SIGTERM itself, so `docker stop` starts its
# graceful shutdown (give it more than its grace period, see stop_grace_period in compose).
ENTRYPOINT ["daily-aggregator"]
CMD ["serve"]
