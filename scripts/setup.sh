#!/usr/bin/env bash
# Installs what the build and tests need on a fresh machine of this project's
# kind (Debian with the Rust toolchain). Idempotent; quiet when all is there.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
# hs/ffi/tests/c_example.rs runs the C example under valgrind (no leak, no invalid read).
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
# gameserver/tests/accounts_postgres.rs starts a throwaway PostgreSQL cluster
# (initdb, pg_ctl from /usr/lib/postgresql/*/bin).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# tests/tests/browser.rs plays the H5 client (gameserver/web/) in headless
# Chromium (Debian's; Playwright downloads no browser here) driven by Node.
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# hs/tests/failover.rs (mod reject) puts a REJECT rule in front of a live
# master inside a network namespace of its own: nft, and ip for its loopback.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "setup: please install: ${need[*]}" >&2
    exit 1
  fi
fi
# The browser tests' npm packages (playwright-core), as package-lock.json pins them.
web="$(cd "$(dirname "$0")/.." && pwd)/gameserver/web"
if [ ! -d "$web/node_modules/playwright-core" ]; then
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
