# syntax=docker/dockerfile:1
# The API image: router (`cosyvoice-api serve`), the render and webhook functions and the
# JetStream source adapter. CPU only; synthesis happens in the GPU predictor image
# (predictor/Dockerfile), or in-process with the espeak development engine.
#
#   docker build -t cosyvoice-api .
#   docker run --rm -p 8012:8012 cosyvoice-api            # embedded profile, espeak engine

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY core ./core
COPY router ./router
COPY predictor ./predictor
COPY functions ./functions
RUN /opt/venv/bin/pip install ".[cluster,functions]"

FROM ${PYTHON_IMAGE}
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
    PORT=8012
# The embedded profile writes voice_cache/ and outputs/ under the working directory.
WORKDIR /home/cosyvoice
USER 10001:10001
EXPOSE 8012
ENTRYPOINT ["cosyvoice-api"]
CMD ["serve"]
