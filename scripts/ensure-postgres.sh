#!/usr/bin/env bash
# Make PostgreSQL's server programs (initdb, pg_ctl, postgres) available for
# tests/integration/test_postgres_store.py, which starts its own throwaway server on loopback.
# Installs Debian's `postgresql` with apt only when they are missing (CI's clean machine); never
# fails the build: without them that one test skips and says why.
set -uo pipefail
have() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if have; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-postgres: no PostgreSQL server binaries and no root apt-get; the PostgreSQL test will skip" >&2
  exit 0
fi
echo "ensure-postgres: installing Debian's postgresql (server binaries for the PostgreSQL test)" >&2
export DEBIAN_FRONTEND=noninteractive
# Install without starting the distribution's own cluster service: the test starts its own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
fi
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
  || echo "ensure-postgres: apt-get install postgresql failed; the PostgreSQL test will skip" >&2
[ "${added_policy:-0}" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
