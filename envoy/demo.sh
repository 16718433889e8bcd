#!/usr/bin/env bash
# `make run`: start Envoy with meshward and the example registry bundle on 127.0.0.1, then show a
# few allowed and denied requests with their reasons. Envoy keeps running afterwards.
set -euo pipefail
ENVOY=${1:-.venv/bin/envoy}
MESHWARD=${2:-target/debug/meshward}
LISTEN=127.0.0.1:8080
ADMIN=127.0.0.1:9901
mkdir -p .run

if [ -f .run/envoy.pid ] && kill -0 "$(cat .run/envoy.pid)" 2>/dev/null; then
  echo "Stopping the Envoy a previous 'make run' left running."
  kill "$(cat .run/envoy.pid)"; sleep 1
fi
"$ENVOY" -c envoy/envoy.yaml --concurrency 1 --disable-hot-restart --log-level info > .run/envoy.log 2>&1 &
echo $! > .run/envoy.pid
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/ready")" = 200 ] && break
  if ! kill -0 "$(cat .run/envoy.pid)" 2>/dev/null; then
    echo "Envoy failed to start; its log:"; cat .run/envoy.log; exit 1
  fi
  sleep 0.2
done
grep -o 'configuration loaded:.*' .run/envoy.log | head -1 | sed 's/^/meshward /'

# Demo tokens, signed with the public demo key the example bundle trusts (never use it for real).
ISS=https://issuer.example.internal
AUD=registry.example.internal
token() { "$MESHWARD" dev token --demo demo-2026-1 --iss "$ISS" --aud "$AUD" --sub "$@"; }
BUILDER=$(token spiffe://example.internal/ci/builder/web)
READER=$(token spiffe://example.internal/apps/web)
BOT=$(token spiffe://example.internal/ci/release-bot)
STALE_BOT=$(token spiffe://example.internal/ci/release-bot --age 600)
ONCALL=$(token spiffe://example.internal/oncall/ann --claim ticket=INC-4711)
EXPIRED=$(token spiffe://example.internal/apps/web --ttl -600)

last_decision() { # the newest audit record: "reason by rule"
  grep -o '{"type":"decision".*' .run/envoy.log | tail -1 |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["reason"], "by", r["rule"], "(break-glass)" if r.get("break_glass") else "")'
}
show() { # description, curl arguments...
  local what=$1; shift
  local status
  status=$(curl -s --path-as-is -o /dev/null -w '%{http_code}' -H "Host: $AUD" "$@")
  sleep 0.05 # let Envoy flush the audit line
  printf '  %-50s -> %s %s\n' "$what" "$status" "$(last_decision)"
}
M=http://$LISTEN/v2
echo
echo "Requests to $AUD through meshward (http://$LISTEN), with the audited reason and rule:"
show "reader pulls a prod manifest" -H "Authorization: Bearer $READER" "$M/prod/web/manifests/1.0"
show "builder pushes to dev/" -X PUT -H "Authorization: Bearer $BUILDER" "$M/dev/web/manifests/1.0"
show "reader pushes to dev/" -X PUT -H "Authorization: Bearer $READER" "$M/dev/web/manifests/1.0"
show "builder pushes to prod/" -X PUT -H "Authorization: Bearer $BUILDER" "$M/prod/web/manifests/1.0"
show "release bot promotes to prod/" -X PUT -H "Authorization: Bearer $BOT" "$M/prod/web/manifests/1.0"
show "release bot, token minted 10 min ago" -X PUT -H "Authorization: Bearer $STALE_BOT" "$M/prod/web/manifests/1.0"
show "on-call deletes in dev/ citing INC-4711" -X DELETE -H "Authorization: Bearer $ONCALL" "$M/dev/web/manifests/sha256:ab"
show "on-call deletes in prod/" -X DELETE -H "Authorization: Bearer $ONCALL" "$M/prod/web/manifests/sha256:ab"
show "no token" "$M/prod/web/manifests/1.0"
show "expired token" -H "Authorization: Bearer $EXPIRED" "$M/prod/web/manifests/1.0"
show "path trick /v2/dev/../prod/" -X PUT -H "Authorization: Bearer $BUILDER" "$M/dev/../prod/web/manifests/1.0"
echo
echo "What the backend received for an allowed request (identity set by meshward, client copy replaced):"
curl -s -D - -o /dev/null -H "Host: $AUD" -H "Authorization: Bearer $BUILDER" \
  -H "x-meshward-subject: spiffe://example.internal/forged" "$M/dev/web/tags/list" \
  | grep -i '^x-backend-saw-subject' | sed 's/^/  /'
echo
echo "Last audit record (one JSON line per decision, in .run/envoy.log):"
grep -o '{"type":"decision".*' .run/envoy.log | tail -1 | sed 's/^/  /'
echo
echo "Envoy is still running (pid $(cat .run/envoy.pid), listener http://$LISTEN, admin http://$ADMIN)."
echo "Try: curl -i -H 'Host: $AUD' -H \"Authorization: Bearer \$($MESHWARD dev token --demo demo-2026-1 --iss $ISS --aud $AUD --sub spiffe://example.internal/apps/web)\" http://$LISTEN/v2/"
echo "Stop it with: make stop"
