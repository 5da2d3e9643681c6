#!/usr/bin/env bash
# Installs what MoE Swarm needs on Debian 12, pinned: the packages in scripts/deps/apt.txt and a
# Python virtual environment (.venv) with scripts/deps/requirements.txt. Safe and fast to re-run:
# it does nothing when every pinned package is already installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mapfile -t pins < <(grep -v -E '^\s*(#|$)' scripts/deps/apt.txt)
missing=()
for pin in "${pins[@]}"; do
  name=${pin%%=*}
  if ! dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pin")
  fi
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${#missing[@]} Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    # A pinned version Debian has since replaced by a security update: take the update, say so.
    echo "install-deps: a pinned version is gone from the archive; installing current versions" >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}"
  fi
fi

# Python virtual environment for the tests (tritonclient etc.); re-done only when the pins change.
stamp=.venv/.requirements.sha256
want=$(sha256sum scripts/deps/requirements.txt | cut -d' ' -f1)
if [[ ! -x .venv/bin/python3 ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "install-deps: creating .venv"
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/deps/requirements.txt
  echo "$want" >"$stamp"
fi
