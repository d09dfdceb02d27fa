# syntax=docker/dockerfile:1
# facedistill images, multi-arch (linux/amd64, linux/arm64):
#   runtime (default)  slim, no torch: `evaluate` and `benchmark` ONNX models on an edge box
#   full               + PyTorch CPU: distill, export, everything
#
#   docker buildx build --platform linux/amd64,linux/arm64 --target runtime -t facedistill:runtime .
#   docker run --rm -v "$PWD/models:/models:ro" -v "$PWD/results:/results" facedistill:runtime \
#       benchmark /models/student_int8.onnx --batch 1,8 --json /results/bench.json
#
# What each image installs lives in docker/install.sh (CI runs the same script). See docs/deploy.md.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm
# Base images. The defaults are the official python images; docker/build.sh --standin passes a local
# Debian-made image (python3 from bookworm) instead, for a machine that cannot reach a registry.
ARG PYTHON_SLIM_IMAGE=python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
ARG PYTHON_FULL_IMAGE=python:${PYTHON_VERSION}-${DEBIAN_RELEASE}

# --- facedistill wheel: pure Python, so build it once on the build machine's own platform --------
FROM --platform=$BUILDPLATFORM ${PYTHON_SLIM_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY facedistill ./facedistill
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# --- runtime environment, for the target platform: binary wheels only, nothing is compiled -------
FROM ${PYTHON_SLIM_IMAGE} AS runtime-build
# Empty = the versions pinned in docker/install.sh (RUN sees build args as environment variables)
ARG ORT_VERSION=""
ARG NUMPY_VERSION=""
COPY docker/install.sh /tmp/install.sh
COPY --from=wheel /dist /dist
RUN bash /tmp/install.sh runtime --venv /opt/venv --src /dist

# --- full environment: PyTorch CPU wheels; the non-slim image has compilers if a sdist needs them -
FROM ${PYTHON_FULL_IMAGE} AS full-build
ARG ORT_VERSION=""
ARG NUMPY_VERSION=""
ARG TORCH_VERSION=""
# A folder of torch CPU wheels mounted into the build (docker/build.sh --torch-wheels), for machines
# that cannot reach the PyTorch index; empty = the index.
ARG TORCH_FIND_LINKS=""
COPY docker/install.sh /tmp/install.sh
COPY --from=wheel /dist /dist
RUN bash /tmp/install.sh full --venv /opt/venv --src /dist

# --- what both final images share: slim Python, a non-root user, /models and /results -----------
FROM ${PYTHON_SLIM_IMAGE} AS base
LABEL org.opencontainers.image.title="facedistill" \
      org.opencontainers.image.description="Distill face-recognition models, export to ONNX, benchmark on edge boxes" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FACEDISTILL_IN_CONTAINER=1
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin facedistill \
    && mkdir -p /models /results \
    && chown facedistill:facedistill /models /results
WORKDIR /results
VOLUME ["/models", "/results"]
ENTRYPOINT ["facedistill"]
CMD ["--help"]

FROM base AS full
COPY --from=full-build /opt/venv /opt/venv
USER 10001:10001

# --- runtime is the last stage, so a plain `docker build .` gives the slim edge image ------------
FROM base AS runtime
COPY --from=runtime-build /opt/venv /opt/venv
USER 10001:10001
