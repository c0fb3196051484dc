# syntax=docker/dockerfile:1
# The tuneforge trainer (`python -m trainer`), run by the Kubernetes launcher as one
# Job per attempt and usable on Ray nodes. The same Python as the lock files
# (requirements/), on a slim base: torch's Linux wheel from the package index is the CUDA
# build and brings the CUDA libraries it needs as wheels (nvidia-*); the GPU driver comes
# from the host through the NVIDIA container toolkit.
# Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t tuneforge-trainer:0.1.0 .

FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tuneforge
WORKDIR /src
# Every release and hash the tests run (requirements/runtime.txt), then torch at the release
# requirements/pins.txt names, with the CUDA wheels that release pins exactly.
COPY requirements/runtime.txt requirements/pins.txt /src/requirements/
RUN /opt/tuneforge/bin/pip install --no-deps --require-hashes \
        --requirement requirements/runtime.txt \
    && /opt/tuneforge/bin/pip install --constraint requirements/pins.txt torch \
    && /opt/tuneforge/bin/pip check
COPY pyproject.toml README.md /src/
COPY jobstore /src/jobstore
COPY service /src/service
COPY trainer /src/trainer
COPY clients/python /src/clients/python
RUN /opt/tuneforge/bin/pip install --no-deps /src /src/clients/python

FROM python:3.11.7-slim-bookworm
RUN groupadd --system --gid 10001 tuneforge \
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
    HF_HOME=/scratch/hf-home \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /scratch
ENTRYPOINT ["python", "-m", "trainer"]
