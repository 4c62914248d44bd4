#!/usr/bin/env bash
# Brings a fresh Debian/Ubuntu machine with Node 20 to the point where
# `npm start` and `npm test` run, doing only what is missing:
#   1. OS packages (OpenBLAS headers, a C++ toolchain, cmake; with --test also
#      chromium, which the timeline test renders pages in, and openssl, which
#      makes the TLS test's certificates) through apt-get;
#   2. a nats-server (the one on the PATH if recent enough, else Debian
#      forky's 2.15 package unpacked into .deps/, leaving apt sources alone);
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

# 2. nats-server: the one on the PATH when it is at least NATS_MIN, else
# Debian forky's 2.15 (one static Go binary, runs on bookworm and later)
# unpacked into .deps/. 2.9 had no fsync-on-write (jetstream sync_interval);
# docs/nats-server.md says what caravan uses from the newer releases.
NATS_MIN=2.10
NATS_SUITE=forky
nats_ok() {
  local v
  v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1) || return 1
  [ -n "$v" ] || return 1
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [ "$major" -gt "${NATS_MIN%%.*}" ] || { [ "$major" -eq "${NATS_MIN%%.*}" ] && [ "$minor" -ge "${NATS_MIN#*.}" ]; }
}
mkdir -p .deps/bin
link=.deps/bin/nats-server
# A link into an earlier set-up's fetch (trixie's 2.10) is replaced by the current one.
case "$(readlink "$link" 2>/dev/null || true)" in */.deps/trixie/*) rm -f "$link" ;; esac
if [ -x "$link" ] && nats_ok "$link"; then :
elif command -v nats-server >/dev/null && nats_ok "$(command -v nats-server)"; then
  ln -sf "$(command -v nats-server)" "$link"
else
  command -v apt-get >/dev/null || die "no nats-server >= $NATS_MIN found: install one (https://nats.io) on the PATH and retry"
  say "fetching nats-server (Debian $NATS_SUITE's package) into .deps/"
  d=$root/.deps/$NATS_SUITE
  rm -rf "$d" && mkdir -p "$d/lists/partial" "$d/etc" "$d/cache/archives/partial"
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" "$NATS_SUITE" > "$d/etc/$NATS_SUITE.sources"
  o=(-o "Dir::State::Lists=$d/lists" -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$d/etc" -o "Dir::Cache=$d/cache" -o Debug::NoLocking=1)
  apt-get "${o[@]}" update -qq >/dev/null 2>&1 || die "could not read Debian $NATS_SUITE's package list from $uri: install nats-server >= $NATS_MIN on the PATH and retry"
  (cd "$d" && apt-get "${o[@]}" download "nats-server/$NATS_SUITE" >/dev/null 2>&1) || die "could not download Debian $NATS_SUITE's nats-server: install nats-server >= $NATS_MIN on the PATH and retry"
  dpkg -x "$d"/nats-server_*.deb "$d/x"
  ln -sf "$d/x/usr/sbin/nats-server" "$link"
  nats_ok "$link" || die "the unpacked nats-server is older than $NATS_MIN"
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
