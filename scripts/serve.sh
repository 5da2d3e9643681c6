#!/usr/bin/env bash
# README command 1: install dependencies, build, and start the daemon (embedded model by default).
# Extra arguments go to `moe-swarm serve`, e.g. scripts/serve.sh --model /models/Mixtral-8x7B.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/build.sh release moe-swarm
exec build/bin/moe-swarm serve "$@"
