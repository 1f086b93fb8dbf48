# One image for every component; the first argument picks the role:
#   config | proxy | gateway | discord-sim  ->  modbot-ring serve <role>
#   litestream ...                          ->  the Litestream binary (backup sidecar)
#   anything else                           ->  run as given (e.g. modbot-ring status)
#
# BASE is pinned by digest: the multi-platform index of python:3.11-slim-bookworm
# (Python 3.11.16, published 2026-08-25, as recorded by docker-library/repo-info). To move
# it, take the new `docker pull python@sha256:...` digest from that record (or
# `docker buildx imagetools inspect python:3.11-slim-bookworm`). Any Debian bookworm image
# with python3, python3-venv (and optionally postgresql-client) works as a BASE too:
# tests/test_container.py builds from one made locally with debootstrap (README,
# "The image").
ARG BASE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${BASE} AS build
# pip reads these from the environment; for an offline build pass
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/deploy/wheelhouse
# with the locked wheels in deploy/wheelhouse/ (the container test does).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The build context is mounted, not copied (BuildKit, the default builder since Docker 23):
# no layer holds the sources. Dependencies first (exact versions and hashes from
# requirements.lock, wheels only: nothing is compiled), so a source change rebuilds only
# the project's own layer.
RUN --mount=type=bind,source=requirements.lock,target=/src/requirements.lock \
    --mount=type=bind,source=deploy,target=/src/deploy \
    python3 -m venv /opt/modbot \
 && /opt/modbot/bin/pip install -q --no-deps --require-hashes --only-binary=:all: \
      -r /src/requirements.lock
# the project itself with the locked setuptools (its `server` extra's packages are the locked
# wheels above: --no-deps); then pip and setuptools leave the runtime
RUN --mount=type=bind,target=/src,rw \
    cd /src \
 && /opt/modbot/bin/pip install -q --no-deps --no-index --no-build-isolation ".[server]" \
 && /opt/modbot/bin/pip uninstall -q -y pip setuptools \
 && /opt/modbot/bin/python -m compileall -q /opt/modbot/lib

FROM ${BASE}
# pg_dump / pg_restore for `modbot-ring db backup|restore` (the config-backup CronJob),
# unless the base has them already; a non-root user whose uid/gid the manifests name.
RUN --mount=type=bind,source=deploy/entrypoint.sh,target=/tmp/entrypoint \
    if ! command -v pg_dump >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends postgresql-client \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 modbot \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin modbot \
 && mkdir /data && chown 10001:10001 /data \
 && install -m 0755 /tmp/entrypoint /usr/local/bin/entrypoint
COPY --from=build /opt/modbot /opt/modbot
# the full PATH: an imported base (docker import) has no environment to extend
ENV PATH=/opt/modbot/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 8700 8701 9080 9090
ENTRYPOINT ["/usr/local/bin/entrypoint"]
CMD ["proxy"]
