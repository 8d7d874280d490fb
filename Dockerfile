# hookshield: a sidecar reverse proxy for outbound webhooks.
# Runs as a non-root user with a read-only root filesystem: the only writable path it needs
# is /var/lib/hookshield (the embedded SQLite queue), to be mounted as a volume.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

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
