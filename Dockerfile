# creditgate container image.
#
#   docker build -t creditgate .
#   docker run --rm -p 8080:8080 -p 8081:8081 -e CREDITGATE_REDIS_URL=... creditgate          # serve
#   docker run --rm -e CREDITGATE_REDIS_URL=... -e CREDITGATE_STORE_URL=... creditgate flush  # flusher alone
#
# Two stages: the builder installs the locked dependencies and a wheel of the project
# into a virtualenv at /opt/venv; the runtime copies that venv only. Every dependency
# ships manylinux wheels for CPython 3.11, so neither stage needs a compiler. Both
# stages must use the same base image: the venv's interpreter is a symlink to
# /usr/local/bin/python3.11 of the base.
#
# The Debian release is named (bookworm, Debian 12: what the test suite runs on; the bare
# `-slim` tag moved to Debian 13). The tag still moves with each 3.11 patch release and
# Debian point update: for a reproducible production image, pin it by digest, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
# with the digest `docker buildx imagetools inspect python:3.11-slim-bookworm` prints.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from the lock alone, so that a source change does not reinstall
# them: the exact versions CI tests (`make deps` installs the same), each file checked
# against the lock's hashes. --no-deps: the lock holds every dependency of the
# dependencies (tests/unit/test_lock.py checks it); `make lock` writes it.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY config/ config/
COPY meter/ meter/
COPY gateway/ gateway/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && pip install --no-cache-dir --no-deps /dist/creditgate-*.whl \
    && pip check \
    && creditgate --help > /dev/null


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="creditgate" \
      org.opencontainers.image.description="Request-metering gateway for conversational-AI bots" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# uid/gid 10001: numeric, so Kubernetes' runAsNonRoot can verify it. /data is the
# working directory and the home of the embedded SQLite store
# (CREDITGATE_STORE_URL=sqlite:////data/creditgate.db); mount a volume there.
RUN groupadd --system --gid 10001 creditgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin creditgate \
    && install -d -o 10001 -g 10001 -m 0750 /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /data
USER 10001:10001

# 8080 channel traffic, 8081 admin (/healthz, /readyz, /metrics, /v1, /ui).
EXPOSE 8080 8081

# The slim image has no curl: ask the liveness endpoint with the stdlib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CREDITGATE_ADMIN_PORT', '8081'), timeout=3)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["creditgate"]
CMD ["serve"]
