# One image for every component; the first argument picks the role:
#   config | proxy | gateway | discord-sim  ->  modbot-ring serve <role>
#   litestream ...                          ->  the Litestream binary (backup sidecar)
#   anything else                           ->  run as given (e.g. modbot-ring status)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modbot_ring ./modbot_ring
COPY config_store ./config_store
COPY router_proxy ./router_proxy
COPY gateway_app ./gateway_app
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[deploy]"

FROM python:3.11-slim
# pg_dump / pg_restore for `modbot-ring db backup` (the config-backup CronJob)
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --create-home modbot \
 && mkdir /data && chown modbot /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "modbot-ring[deploy]" \
 && rm -rf /wheels
COPY deploy/entrypoint.sh /usr/local/bin/entrypoint
USER 10001
ENV PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8080 8700 8701
ENTRYPOINT ["/usr/local/bin/entrypoint"]
CMD ["proxy"]
