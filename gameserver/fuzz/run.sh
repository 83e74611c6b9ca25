#!/usr/bin/env bash
# Runs every gameserver fuzz target for N seconds (default 30): see scripts/fuzz.sh.
#   gameserver/fuzz/run.sh [seconds] [target ...]
exec "$(dirname "$0")/../../scripts/fuzz.sh" "$(dirname "$0")" "$@"
