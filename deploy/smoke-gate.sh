#!/usr/bin/env bash
# The gate of `just deploy`: reads the smoke test's table (its pod log) on stdin
# and fails when it warned about something not explicitly accepted. A warning
# (a superuser or writing database role, a store without conditional writes, …)
# is a deployment that works but is unsafe: it must be fixed, or accepted by
# name on purpose (`just deploy --accept-warnings=NAME,NAME`).
#
#   smoke-gate.sh [ACCEPTED,NAMES]  < smoke-test output
#
# Table lines are `STATUS  name  detail` (smoke-test/src/report.rs, whose tests
# pin the format). Exit 0: no unaccepted warning; 1: some; 2: no verdict line
# (not a smoke-test table).
set -euo pipefail
accepted=",${1:-},"
table=$(cat)
grep -q '^smoke-test \(OK\|FAILED\):' <<<"$table" || {
  echo "smoke gate: no smoke-test verdict in the output" >&2
  exit 2
}
unaccepted=()
while read -r status name _; do
  [ "$status" = WARN ] || continue
  case "$accepted" in
    *",$name,"*) echo "smoke gate: warning $name accepted (--accept-warnings)" ;;
    *) unaccepted+=("$name") ;;
  esac
done <<<"$table"
if [ "${#unaccepted[@]}" -gt 0 ]; then
  names=$(IFS=,; echo "${unaccepted[*]}")
  echo "just deploy: the smoke test warned about: $names. Fix what the table above says, or accept it deliberately: just deploy --accept-warnings=$names" >&2
  exit 1
fi
