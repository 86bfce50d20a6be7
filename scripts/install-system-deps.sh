#!/usr/bin/env bash
# System packages the service and its tests need, on Debian/Ubuntu, as root.
#   ffmpeg            decoding fallback and test audio conversion (PyAV ships its own libraries)
#   sox, libsox-fmt-mp3   test audio conversion (FLAC, MP3, OGG)
#   espeak-ng         synthesizes real speech for the tests
#   prometheus        prometheus + promtool: the tests check deploy/prometheus rules and the
#                     Grafana dashboard's queries against a real Prometheus server
#   nodejs, npm       the Node.js example client (client/examples/node) and its test; skipped
#                     when node and npm are already on the PATH (e.g. from NodeSource)
set -euo pipefail
PKGS=(ffmpeg sox libsox-fmt-mp3 espeak-ng prometheus)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${PKGS[*]} node npm"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "run as root (or install sudo): needs ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
