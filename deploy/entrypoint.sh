#!/bin/sh
# Container entry point: the first argument is the role (see Dockerfile).
set -eu
role="${1:-proxy}"
[ $# -gt 0 ] && shift
case "$role" in
  config|proxy|gateway|discord-sim) exec modbot-ring serve "$role" "$@" ;;
  litestream) exec litestream "$@" ;;
  *) exec "$role" "$@" ;;
esac
