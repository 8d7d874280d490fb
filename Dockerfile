# hookshield: a sidecar reverse proxy for outbound webhooks.
# Runs as a non-root user with a read-only root filesystem: the only writable path it needs
# is /var/lib/hookshield (the embedded SQLite queue), to be mounted as a volume.

FROM python:3.11-slim-bookworm AS build
# The data plane's modules are compiled with mypyc (setup.py, HOOKSHIELD_COMPILE=1): a C
# compiler here, nothing extra in the image that runs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "mypy==2.4.1" "setuptools>=77"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN HOOKSHIELD_COMPILE=1 pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/hookshield-*.whl

FROM python:3.11-slim-bookworm
ARG UID=10001
RUN groupadd --system --gid "${UID}" hookshield \
    && useradd --system --uid "${UID}" --gid hookshield --no-create-home --shell /usr/sbin/nologin hookshield \
    && mkdir -p /var/lib/hookshield /etc/hookshield \
    && chown hookshield:hookshield /var/lib/hookshield
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/hookshield-*.whl \
    && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOOKSHIELD_SQLITE_PATH=/var/lib/hookshield/queue.db
VOLUME ["/var/lib/hookshield"]
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["hookshield"]
CMD ["run", "--config", "/etc/hookshield/hookshield.yaml"]
