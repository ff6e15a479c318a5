#!/usr/bin/env bash
# Installs what edict's lab needs on this machine, idempotently: the Debian packages listed in
# tests/lab/packages (only the missing ones) and the cached Debian roots of the other Nix
# versions' hosts (trixie: Nix 2.26, sid: Nix 2.34). Debian 12, as root; .ci/run, `cargo run --example lab` and the message of a
# `cargo test` that lacks something all point here.
#
# usage: tests/lab/install.sh [--no-roots]    (--no-roots: the packages only)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "install.sh: the lab installs packages and starts hosts in namespaces: run it as root" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "install.sh: no apt-get: the lab is built for Debian 12 (see tests/lab/packages for what it needs)" >&2; exit 1; }

missing=()
while read -r package _; do
  case $package in '#'* | '') continue ;; esac
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done <"$here/packages"
if ((${#missing[@]})); then
  echo "install.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if [ "${1:-}" != --no-roots ]; then
  for suite in trixie sid; do "$here/debian-root.sh" "$suite" >/dev/null; done
fi
