#!/usr/bin/env bash
# Prints the path of a real application's PostgreSQL schema, for the tests that run pg-ghost
# on a schema nobody here wrote (tests/it/real_schema.rs).
#
#   scripts/sample-schema.sh [CACHE_DIR]
#
# The schema is DAViCal's, a CalDAV/CardDAV server (GPL-2+), as Debian ships it in the
# packages `davical` (dba/*.sql) and `libawl-php` (the AWL tables DAViCal builds on). The
# packages are fetched with `apt-get download` (nothing is installed) into CACHE_DIR
# (default: target/sample-schema, or $PG_GHOST_SAMPLE_SCHEMA_DIR), unpacked there with
# `dpkg-deb -x`, and their SQL files are joined, in the order DAViCal's own
# create-database.sh and update-davical-database apply them, into one file whose path is
# printed. Later runs find that file and need no network. Nothing of it is kept in the
# repository.
#
# Exits non-zero, saying why, when the packages cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "sample-schema: $*" >&2; exit 1; }

dir=${1:-${PG_GHOST_SAMPLE_SCHEMA_DIR:-target/sample-schema}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
out="$dir/davical.sql"
if [[ -s "$out" ]]; then
  echo "$out"
  exit 0
fi

packages=(davical libawl-php)
command -v apt-get >/dev/null || die "apt-get is needed to fetch ${packages[*]} (Debian's packages)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to unpack ${packages[*]}"

debs() { compgen -G "$dir/davical_*.deb" >/dev/null && compgen -G "$dir/libawl-php_*.deb" >/dev/null; }

download() {
  # apt-get download writes into the current directory. As root it warns that the `_apt`
  # user cannot write there; the download works all the same.
  (cd "$dir" && apt-get download -q "${packages[@]}") >"$dir/download.log" 2>&1
}

if ! debs; then
  if ! download; then
    # A machine whose package lists were never fetched knows no candidate yet.
    if [[ $(id -u) == 0 ]]; then
      echo "sample-schema: apt-get download failed; fetching the package lists (apt-get update) and trying again" >&2
      apt-get update -qq >>"$dir/download.log" 2>&1 || true
      download || die "apt-get download ${packages[*]} failed (see $dir/download.log):
$(tail -5 "$dir/download.log")"
    else
      die "apt-get download ${packages[*]} failed (see $dir/download.log; 'apt-get update' may be needed first):
$(tail -5 "$dir/download.log")"
    fi
  fi
  debs || die "apt-get download did not leave ${packages[*]} in $dir"
fi

tree="$dir/unpacked"
rm -rf "$tree"
mkdir -p "$tree"
for deb in "$dir"/davical_*.deb "$dir"/libawl-php_*.deb; do
  dpkg-deb -x "$deb" "$tree" || die "dpkg-deb -x $deb failed"
done

awl="$tree/usr/share/awl/dba"
dba="$tree/usr/share/davical/dba"
# create-database.sh: the AWL tables, AWL's schema management, DAViCal's tables; then
# update-davical-database (without patches): locales, views, functions (the RRULE ones for
# PostgreSQL 8.3 and later); then create-database.sh's base data.
files=(
  "$awl/awl-tables.sql"
  "$awl/schema-management.sql"
  "$dba/davical.sql"
  "$dba/supported_locales.sql"
  "$dba/views/dav_principal.sql"
  "$dba/caldav_functions.sql"
  "$dba/rrule_functions.sql"
  "$dba/base-data.sql"
)
for f in "${files[@]}"; do
  [[ -f "$f" ]] || die "$f is missing from the unpacked packages (did the packages change?)"
done

tmp="$out.tmp"
{
  echo "-- DAViCal's database schema (GPL-2+), joined from the Debian packages:"
  for deb in "$dir"/davical_*.deb "$dir"/libawl-php_*.deb; do echo "--   $(basename "$deb")"; done
  for f in "${files[@]}"; do
    echo
    echo "-- ${f#"$tree"/}"
    cat "$f"
    echo
  done
} >"$tmp"
mv "$tmp" "$out"
echo "$out"
