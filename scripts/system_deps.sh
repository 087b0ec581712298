#!/usr/bin/env bash
# System libraries for headless MuJoCo rendering (LIBERO, Meta-World): EGL / OSMesa from Mesa,
# software GL on CPU. Installs only what is missing, and only where it can (root + apt-get);
# elsewhere it prints the command to run. Idempotent and fast when everything is present.
set -uo pipefail
gl_pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libosmesa6)
command -v dpkg >/dev/null 2>&1 || exit 0   # not a Debian-like system: nothing we can check
missing=()
for p in "${gl_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[system_deps] installing ${missing[*]}" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    || echo "[system_deps] warning: could not install ${missing[*]}; simulator rendering may fail" >&2
else
  echo "[system_deps] simulator rendering needs: sudo apt-get install -y ${missing[*]}" >&2
fi
exit 0
