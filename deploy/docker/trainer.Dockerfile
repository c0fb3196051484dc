# syntax=docker/dockerfile:1
# The tuneforge trainer (`python -m trainer`), run by the Kubernetes launcher as one
# Job per attempt and usable on Ray nodes. CUDA runtime base; torch pinned (the
# package index's Linux wheel is the CUDA build).
# Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t tuneforge-trainer:0.1.0 .

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3.12=3.12.3-1ubuntu0.9 \
        python3.12-venv=3.12.3-1ubuntu0.9 \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/tuneforge
WORKDIR /src
COPY deploy/docker/trainer-constraints.txt /src/deploy/docker/trainer-constraints.txt
RUN /opt/tuneforge/bin/pip install --constraint deploy/docker/trainer-constraints.txt \
        torch transformers tokenizers safetensors peft accelerate
COPY pyproject.toml README.md /src/
COPY jobstore /src/jobstore
COPY service /src/service
COPY trainer /src/trainer
COPY clients/python /src/clients/python
RUN /opt/tuneforge/bin/pip install --constraint deploy/docker/trainer-constraints.txt \
        /src /src/clients/python

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3.12=3.12.3-1ubuntu0.9 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tuneforge \
    && useradd --system --uid 10001 --gid tuneforge --home-dir /scratch \
        --shell /usr/sbin/nologin tuneforge
COPY --from=build /opt/tuneforge /opt/tuneforge
# Pods run it with a read-only root filesystem: everything it writes goes to /scratch
# (an emptyDir in the Job the launcher renders), which is also HOME and the cache.
ENV PATH=/opt/tuneforge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/scratch \
    HF_HOME=/scratch/hf-home
USER 10001:10001
WORKDIR /scratch
ENTRYPOINT ["python", "-m", "trainer"]
