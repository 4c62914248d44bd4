#!/usr/bin/env bash
# Brings a fresh Debian/Ubuntu machine with Node 20 to the point where
# `npm start` and `npm test` run, doing only what is missing:
#   1. OS packages (OpenBLAS headers, a C++ toolchain, cmake; with --test also
#      chromium, which the timeline test renders pages in, and openssl, which
#      makes the TLS test's certificates) through apt-get;
#   2. a nats-server >= 2.10 (the one on the PATH if recent enough, else
#      Debian trixie's package unpacked into .deps/, leaving apt sources alone);
#   3. `npm ci` when node_modules is missing or older than package-lock.json;
#   4. the native addon and the standalone driver when missing or stale.
# Idempotent: a second run does nothing and takes a fraction of a second.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "missing $*, and this machine has no apt-get: install $* with your package manager"
  say "installing $* with apt-get"
  if [ -z "$apt_updated" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update needs root: run 'sudo apt-get update && sudo apt-get install -y $*' and retry"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "could not install $*: run 'sudo apt-get install -y $*' and retry"
}

# 1. OS packages
missing=()
{ [ -f /usr/include/cblas.h ] || ls /usr/include/*/cblas.h >/dev/null 2>&1 || [ -f /usr/include/openblas/cblas.h ]; } || missing+=(libopenblas-dev)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v python3 >/dev/null || missing+=(python3)
command -v cmake >/dev/null || missing+=(cmake)
if [ "${1:-}" = --test ]; then
  { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } || missing+=(chromium)
  command -v openssl >/dev/null || missing+=(openssl)  # scripts/test-certs.sh, for the TLS test
fi
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# 2. nats-server >= 2.10 (2.9 has no fsync-on-write: jetstream sync_interval)
nats_ok() {
  local v
  v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1) || return 1
  [ -n "$v" ] || return 1
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }
}
mkdir -p .deps/bin
link=.deps/bin/nats-server
if [ -x "$link" ] && nats_ok "$link"; then :
elif command -v nats-server >/dev/null && nats_ok "$(command -v nats-server)"; then
  ln -sf "$(command -v nats-server)" "$link"
else
  command -v apt-get >/dev/null || die "no nats-server >= 2.10 found: install one (https://nats.io) on the PATH and retry"
  say "fetching nats-server 2.10 (Debian trixie's package) into .deps/"
  d=$root/.deps/trixie
  rm -rf "$d" && mkdir -p "$d/lists/partial" "$d/etc" "$d/cache/archives/partial"
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$d/etc/trixie.sources"
  o=(-o "Dir::State::Lists=$d/lists" -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$d/etc" -o "Dir::Cache=$d/cache" -o Debug::NoLocking=1)
  apt-get "${o[@]}" update -qq >/dev/null 2>&1 || die "could not read Debian trixie's package list from $uri: install nats-server >= 2.10 on the PATH and retry"
  (cd "$d" && apt-get "${o[@]}" download nats-server >/dev/null 2>&1) || die "could not download Debian trixie's nats-server: install nats-server >= 2.10 on the PATH and retry"
  dpkg -x "$d"/nats-server_*.deb "$d/x"
  ln -sf "$d/x/usr/sbin/nats-server" "$link"
  nats_ok "$link" || die "the unpacked nats-server is older than 2.10"
fi

# 3. node modules
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

# 4. native builds, when any source is newer than the build
addon=native/build/Release/caravan_engine.node
driver=build/driver/caravan-engine
stale() { [ ! -f "$1" ] || [ -n "$(find native/src native/cuda native/binding.gyp native/CMakeLists.txt -newer "$1" -print -quit)" ]; }
# The driver first: where nvcc is, the addon links the CUDA library its build makes.
if stale "$driver"; then
  say "building the standalone engine driver"
  bash scripts/build-native.sh driver
fi
if stale "$addon" || { [ -f build/driver/libcaravan_cuda.a ] && [ build/driver/libcaravan_cuda.a -nt "$addon" ]; }; then
  say "building the native addon"
  bash scripts/build-native.sh addon
fi
