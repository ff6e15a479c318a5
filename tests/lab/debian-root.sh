#!/usr/bin/env bash
# Builds the Debian root that the lab's hosts of another Nix run in, once per suite, and
# caches it outside the work tree: trixie (Debian 13, Nix 2.26) or sid (Nix 2.34).
# Idempotent and safe to run concurrently: a finished root is marked by
# $ROOT/.edict-lab-complete and the build is serialised with flock.
#
# usage: tests/lab/debian-root.sh trixie|sid    # prints the root's path on stdout
# env:   EDICT_LAB_CACHE  (default /var/cache/edict-lab)
#        EDICT_LAB_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

suite=${1:-}
case $suite in
  trixie | sid) ;;
  *) echo "usage: debian-root.sh trixie|sid" >&2; exit 2 ;;
esac
cache=${EDICT_LAB_CACHE:-/var/cache/edict-lab}
mirror=${EDICT_LAB_MIRROR:-http://deb.debian.org/debian}
# Bump the suffix when the package list below changes, so old caches are not reused.
root=$cache/$suite-v2
marker=$root/.edict-lab-complete

if [ -e "$marker" ]; then echo "$root"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "debian-root.sh: building the lab's Debian $suite root needs root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap unshare flock chroot; do
  command -v "$tool" >/dev/null || { echo "debian-root.sh: '$tool' is missing: apt-get install debootstrap util-linux coreutils" >&2; exit 1; }
done

mkdir -p "$cache"
exec 9>"$cache/.$suite.lock"
flock 9
# Another process may have finished it while we waited for the lock.
if [ -e "$marker" ]; then echo "$root"; exit 0; fi

echo "debian-root.sh: building $root from $mirror (2-4 minutes, once)" >&2
rm -rf "$root"
# nix-bin can't come in through --include (it depends on a virtual package), so it is
# installed with apt inside the chroot afterwards.
debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2

# apt inside the chroot wants /proc and /dev; a private mount namespace keeps those mounts
# from outliving this script. policy-rc.d stops package scripts from starting sshd.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
unshare --mount --propagation private sh -euc '
  root=$1
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -f install -y
  # The lists debootstrap fetched are enough; a fresher one is welcome but optional (the
  # archive mirror reached here may serve a sid Release file past its Valid-Until).
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Check-Valid-Until=false update || true
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends \
    nix-bin openssh-server openssh-client rsync git ca-certificates fish tcsh
  chroot "$root" apt-get clean
  chroot "$root" nix --version
' sh "$root" >&2
rm -f "$root/usr/sbin/policy-rc.d"
# Host keys made by the package are never used: every lab host gets its own.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/run/sshd"
touch "$marker"
echo "$root"
