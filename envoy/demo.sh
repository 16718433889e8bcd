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
EXPIRED=$(token spiffe://example.internal/apps/web --ttl -600)

show() { # description, expected, curl arguments...
  local what=$1; shift
  local out
  out=$(curl -s --path-as-is -o .run/body -w '%{http_code}' -H "Host: $AUD" "$@")
  printf '  %-58s -> %s %s\n' "$what" "$out" "$(tr -d '\n' < .run/body)"
}
echo
echo "Requests to registry.example.internal through meshward (http://$LISTEN):"
show "reader pulls a prod manifest" -H "Authorization: Bearer $READER" "http://$LISTEN/v2/prod/web/manifests/1.0"
show "builder pushes to dev/" -X PUT -H "Authorization: Bearer $BUILDER" "http://$LISTEN/v2/dev/web/manifests/1.0"
show "reader pushes to dev/" -X PUT -H "Authorization: Bearer $READER" "http://$LISTEN/v2/dev/web/manifests/1.0"
show "builder pushes to prod/" -X PUT -H "Authorization: Bearer $BUILDER" "http://$LISTEN/v2/prod/web/manifests/1.0"
show "builder deletes a manifest" -X DELETE -H "Authorization: Bearer $BUILDER" "http://$LISTEN/v2/dev/web/manifests/1.0"
show "no token" "http://$LISTEN/v2/prod/web/manifests/1.0"
show "expired token" -H "Authorization: Bearer $EXPIRED" "http://$LISTEN/v2/prod/web/manifests/1.0"
show "path trick /v2/dev/../prod/" -X PUT -H "Authorization: Bearer $BUILDER" "http://$LISTEN/v2/dev/../prod/web/manifests/1.0"
echo
echo "What the backend received for an allowed request (identity set by meshward, client copy replaced):"
curl -s -D - -o /dev/null -H "Host: $AUD" -H "Authorization: Bearer $BUILDER" \
  -H "x-meshward-subject: spiffe://example.internal/forged" "http://$LISTEN/v2/dev/web/tags/list" \
  | grep -i '^x-backend-saw-subject' | sed 's/^/  /'
echo
echo "Last audit record (one JSON line per decision, in .run/envoy.log):"
grep -o '{"type":"decision".*' .run/envoy.log | tail -1 | sed 's/^/  /'
echo
echo "Envoy is still running (pid $(cat .run/envoy.pid), listener http://$LISTEN, admin http://$ADMIN)."
echo "Try: curl -i -H 'Host: $AUD' -H \"Authorization: Bearer \$($MESHWARD dev token --demo demo-2026-1 --iss $ISS --aud $AUD --sub spiffe://example.internal/apps/web)\" http://$LISTEN/v2/"
echo "Stop it with: make stop"
