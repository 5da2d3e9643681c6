#!/bin/sh
# Entrypoint of deploy/docker/Dockerfile.cpu (Fly.io). Fly mounts volumes owned by root, so the
# container starts as root, makes the model cache on the volume writable for the unprivileged
# user `moe`, and then exec's the daemon as that user (no shell stays behind: the daemon is PID 1
# and receives SIGTERM itself). Started as non-root, it just exec's the daemon.
set -eu
cache=${MOE_CACHE_DIR:-/models/cache}
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$cache"
  chown moe:moe "$cache"
  exec setpriv --reuid=moe --regid=moe --init-groups /usr/local/bin/moe-swarm "$@"
fi
exec /usr/local/bin/moe-swarm "$@"
