#!/usr/bin/env bash
# Runs every balancer fuzz target for N seconds (default 30): see scripts/fuzz.sh.
#   balancer/fuzz/run.sh [seconds] [target ...]
exec "$(dirname "$0")/../../scripts/fuzz.sh" "$(dirname "$0")" "$@"
