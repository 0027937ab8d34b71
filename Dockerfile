# vecserve on the CPU: the gRPC server with the packaged all-MiniLM-L6-v2 model, no download at run time.
#
#   docker build -t vecserve .
#   docker run -p 50051:50051 -v vecserve-indexes:/app/indexes vecserve
#
# Build arguments:
#   BASE_IMAGE       Debian bookworm image to build on (its python3 is 3.11).
#   TORCH_INDEX_URL  package index torch is taken from. The default, PyTorch's CPU index, keeps the image
#                    small; empty takes torch from PyPI like every other dependency (on x86_64 that is a
#                    CUDA build, several GB larger).
#   PIP_CERT         CA bundle pip trusts, for networks that intercept TLS; empty means pip's own bundle.
#   PIP_FIND_LINKS   extra directories of wheels pip looks in (for example a wheelhouse mounted into the build).
ARG BASE_IMAGE=debian:bookworm-slim

# Debian's Python, shared by every stage so that the virtual environment built below runs unchanged.
FROM ${BASE_IMAGE} AS python
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The dependency list from pyproject.toml, the one place that names them. Copying only this list into the
# build stage keeps the dependency layers cached when other parts of pyproject.toml change.
FROM python AS requirements
COPY pyproject.toml /src/
RUN python3 -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /requirements.txt

FROM python AS build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# torch alone from its index (the other dependencies are not all there), then everything else from PyPI.
# torch's C++ headers and test programs go: they serve only to compile extensions or to test torch itself.
RUN torch_requirement="$(grep -E '^torch\b' /tmp/requirements.txt)" \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
           pip install --index-url "$TORCH_INDEX_URL" "$torch_requirement"; \
       else \
           pip install "$torch_requirement"; \
       fi \
    && rm -rf /opt/venv/lib/python3.11/site-packages/torch/include /opt/venv/lib/python3.11/site-packages/torch/test
RUN pip install -r /tmp/requirements.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY service ./service
COPY clients ./clients
RUN pip install . \
    && vecserve --help > /dev/null \
    && python -c "import torch; print('torch', torch.__version__)"


FROM python
RUN groupadd --gid 10001 vecserve \
    && useradd --uid 10001 --gid vecserve --home-dir /home/vecserve --create-home --no-log-init vecserve \
    && mkdir -p /app/indexes \
    && chown vecserve:vecserve /app/indexes
COPY --from=build /opt/venv /opt/venv
# The server's address and data directory as VECSERVE_* variables rather than flags, so that `docker run -e`
# can change them; the health check below follows VECSERVE_LISTEN's port.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VECSERVE_LISTEN=0.0.0.0:50051 \
    VECSERVE_DATA_DIR=/app/indexes
WORKDIR /app
USER vecserve
# Indexes live here; a named volume or bind mount keeps them across container restarts.
VOLUME ["/app/indexes"]
EXPOSE 50051
# `vecserve health` asks the standard grpc.health.v1 service on VECSERVE_LISTEN's port; it reads the client's
# VECSERVE_CA_FILE / VECSERVE_CLIENT_CERT / VECSERVE_CLIENT_KEY too, so it also works when the server serves
# TLS (with a certificate for "localhost"). The model loads before the port opens, hence the start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD vecserve --address "localhost:${VECSERVE_LISTEN##*:}" --timeout 5 health
# Equivalent to `vecserve serve --listen 0.0.0.0:50051 --data-dir /app/indexes`, through the variables above.
CMD ["vecserve", "serve"]
