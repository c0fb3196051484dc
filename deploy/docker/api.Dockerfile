# syntax=docker/dockerfile:1
# The tuneforge API server (REST, gRPC, Bedrock face, reconciler): no torch.
# Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t tuneforge-api:0.1.0 .

FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/tuneforge
# The releases and hashes `make lock` resolved (requirements/api.txt, at the same pins as
# the tests run): the server's own imports, its C event loop and HTTP parser included.
COPY requirements/api.txt /src/requirements/api.txt
RUN /opt/tuneforge/bin/pip install --no-deps --require-hashes --requirement requirements/api.txt
COPY pyproject.toml README.md /src/
COPY jobstore /src/jobstore
COPY service /src/service
COPY trainer /src/trainer
COPY clients/python /src/clients/python
# The project's own code only: its dependencies are the lock above (the full list would
# bring torch, which the API never imports).
RUN /opt/tuneforge/bin/pip install --no-deps /src /src/clients/python

FROM python:3.11.7-slim-bookworm
ENV PATH=/opt/tuneforge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TUNEFORGE_HOME=/var/lib/tuneforge \
    TUNEFORGE_REST_HOST=0.0.0.0 \
    TUNEFORGE_GRPC_HOST=0.0.0.0
RUN groupadd --system --gid 10001 tuneforge \
    && useradd --system --uid 10001 --gid tuneforge --home-dir /var/lib/tuneforge \
        --create-home --shell /usr/sbin/nologin tuneforge
COPY --from=build /opt/tuneforge /opt/tuneforge
USER 10001:10001
WORKDIR /var/lib/tuneforge
EXPOSE 8000 50051
ENTRYPOINT ["tuneforge-server"]
