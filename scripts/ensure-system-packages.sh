#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real (redis-server, nginx, chromium, npm for
# Artillery, prometheus for promtool) when they are missing. Needs root for apt-get; otherwise says what to install and lets the
# tests that need a missing program skip with that reason.
set -euo pipefail
declare -A binary_of=([redis-server]=redis-server [nginx]=/usr/sbin/nginx [chromium]=chromium [npm]=npm [prometheus]=promtool)
missing=()
for pkg in "${!binary_of[@]}"; do
  command -v "${binary_of[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages' own services are not wanted: the tests start their own instances on free ports.
for svc in redis-server nginx prometheus; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  service "$svc" stop >/dev/null 2>&1 || true
done
echo "installed: ${missing[*]}"
