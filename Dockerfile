# One image for every Python process of ModelOps Stack: MLflow tracking server, model server,
# trainer, bucket provisioner and schema migration. Entrypoint `modelops`; the chart sets the command.
#
#   docker build -t modelops:0.1.0 .
#   docker build --build-arg BASE_IMAGE=localhost/base-python:bookworm -t modelops:0.1.0 .   # offline base
#
# Works with a read-only root filesystem: it writes only to /tmp (mount an emptyDir there).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
# Dependencies first, in a layer of their own: it is rebuilt only when pyproject/constraints change.
# The CA bundle is an optional build secret (for build machines behind an intercepting proxy); it is
# never stored in the image.
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi; \
    mkdir -p src/modelops && touch src/modelops/__init__.py \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c constraints.txt . \
 && rm -rf build src
COPY src ./src
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi; \
    /opt/venv/bin/pip install --no-deps --force-reinstall . \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${BASE_IMAGE}
ARG GIT_COMMIT=""
LABEL org.opencontainers.image.title="modelops" \
      org.opencontainers.image.description="ModelOps Stack: model server, trainer and MLflow in one image" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin modelops
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp \
    MODELOPS_GIT_COMMIT=${GIT_COMMIT}
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 5000
ENTRYPOINT ["modelops"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
