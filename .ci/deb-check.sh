#!/usr/bin/env bash
# Install a ferrite .deb into a throw-away Debian root made by mmdebstrap
# (nothing on this machine changes) and check what a user would: apt pulls
# the dependencies, the service user exists, the unit is enabled, the board
# profile in /etc/ferrite loads, `ferrite --version` runs; removal stops and
# disables the unit. Needs root (or fakechroot) and apt's Debian sources.
# Usage: .ci/deb-check.sh target/debian/ferrite_*.deb [SUITE]
set -euo pipefail
deb="$(realpath "$1")"
suite="${2:-bookworm}"
name="$(basename "$deb")"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
command -v mmdebstrap >/dev/null || { $sudo apt-get update -qq; $sudo apt-get install -y -qq mmdebstrap >/dev/null; }
wants='etc/systemd/system/multi-user.target.wants/ferrite.service'
$sudo mmdebstrap --variant=apt --quiet \
  --customize-hook="copy-in $deb /tmp" \
  --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /tmp/$name >/dev/null" \
  --customize-hook='echo "installed: $(chroot "$1" ferrite --version)"' \
  --customize-hook='chroot "$1" getent passwd ferrite >/dev/null && echo "service user: ferrite"' \
  --customize-hook='chroot "$1" dpkg -s python3-pip >/dev/null && echo "python3-pip: installed"' \
  --customize-hook="test -L \"\$1/$wants\" && echo 'unit: enabled'" \
  --customize-hook="test ! -e \"\$1/etc/systemd/system/multi-user.target.wants/ferrite-rpc.service\" && echo 'rpc unit: installed, not enabled'" \
  --customize-hook='chroot "$1" ferrite --board /etc/ferrite/ferrite.toml board show | head -2' \
  --customize-hook='chroot "$1" dpkg -r ferrite >/dev/null && echo "removed"' \
  --customize-hook="test ! -e \"\$1/$wants\" && echo 'unit: disabled after removal'" \
  "$suite" /dev/null
echo "deb-check: ok"
