# syntax=docker/dockerfile:1
# The API image: router (`cosyvoice-api serve`), the render and webhook functions and the
# JetStream source adapter. CPU only; synthesis happens in the GPU predictor image
# (predictor/Dockerfile), or in-process with the espeak development engine.
#
#   docker build -t cosyvoice-api .
#   docker run --rm -p 8080:8080 cosyvoice-api            # embedded profile, espeak engine
#
# Reproducible builds: the base is a fixed release pinned by digest, and every Python
# package is constrained to requirements/api.lock. PYTHON_IMAGE and PYTHON_IMAGE_DIGEST
# go together: the digest wins over the tag, so a new PYTHON_IMAGE needs its own digest
# (`docker buildx imagetools inspect python:3.11.11-slim-bookworm` prints it), or
# `--build-arg PYTHON_IMAGE_DIGEST=` to build from the tag alone. The default is the
# digest public builds pin for python:3.11.11-slim-bookworm; check it before relying on it.
#
# Without a registry, `make images` (tools/images/build-api-image.sh) builds the same
# file with buildah on a Debian bookworm base made by debootstrap, passing that base's
# name and digest as PYTHON_IMAGE and PYTHON_IMAGE_DIGEST.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG PYTHON_IMAGE_DIGEST=sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

FROM ${PYTHON_IMAGE}${PYTHON_IMAGE_DIGEST:+@${PYTHON_IMAGE_DIGEST}} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY requirements/api.lock ./requirements/api.lock
COPY core ./core
COPY router ./router
COPY predictor ./predictor
COPY functions ./functions
COPY cli ./cli
RUN /opt/venv/bin/pip install --constraint requirements/api.lock ".[cluster,functions]"

FROM ${PYTHON_IMAGE}${PYTHON_IMAGE_DIGEST:+@${PYTHON_IMAGE_DIGEST}}
LABEL org.opencontainers.image.title="cosyvoice-api" \
      org.opencontainers.image.description="CosyVoice TTS API, functions and JetStream source" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 cosyvoice \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cosyvoice --shell /usr/sbin/nologin cosyvoice
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080
# PORT is the router's port; Knative overrides it with the container port it routes to
# (8012 is its queue-proxy's). The embedded profile writes voice_cache/ and outputs/
# under the working directory; the chart mounts an emptyDir there (read-only root).
WORKDIR /home/cosyvoice
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["cosyvoice-api"]
CMD ["serve"]
