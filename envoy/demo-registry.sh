#!/usr/bin/env bash
# `make demo-registry`: a real OCI registry (Debian's docker-registry) behind Envoy + meshward with the
# example registry bundle; skopeo pushes, is refused, promotes and pulls with workload tokens.
# Everything runs on 127.0.0.1 and is stopped at the end.
set -euo pipefail
ENVOY=${1:-.venv/bin/envoy}
MESHWARD=${2:-target/debug/meshward}
WASM=target/meshward.wasm
REGISTRY_PORT=5050 LISTEN_PORT=8090 ADMIN_PORT=9902
DIR=.run/registry-demo
rm -rf "$DIR" && mkdir -p "$DIR/storage"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The registry, storing on disk under .run/.
cat > "$DIR/registry.yml" <<YAML
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $PWD/$DIR/storage } }
http: { addr: 127.0.0.1:$REGISTRY_PORT }
YAML
docker-registry serve "$DIR/registry.yml" > "$DIR/registry.log" 2>&1 & pids+=($!)

# The example bundle, its hosts pointed at the authority skopeo uses; Envoy routes to the registry.
python3 - "$LISTEN_PORT" <<'PY' > "$DIR/bundle.json"
import json, sys
b = json.load(open("policies/registry.json"))
for r in b["rules"]:
    r["hosts"] = [f"127.0.0.1:{sys.argv[1]}"]
print(json.dumps(b))
PY
"$MESHWARD" render envoy "$DIR/bundle.json" --listen-port $LISTEN_PORT --admin-port $ADMIN_PORT \
  --upstream 127.0.0.1:$REGISTRY_PORT --wasm "$WASM" > "$DIR/envoy.yaml"
"$ENVOY" -c "$DIR/envoy.yaml" --concurrency 1 --disable-hot-restart > "$DIR/envoy.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/ready")" = 200 ] \
    && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$REGISTRY_PORT/v2/")" = 200 ] && break
  sleep 0.2
done

# The image to push: the plugin itself, as an OCI image layout.
"$MESHWARD" image --wasm "$WASM" --out "$DIR/image" | tail -1
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$DIR/policy.json"
skopeo_() { skopeo --policy "$DIR/policy.json" --command-timeout 60s "$@"; }
token() { "$MESHWARD" dev token --demo demo-2026-1 --iss https://issuer.example.internal --aud registry.example.internal --sub "$@"; }
BUILDER=$(token spiffe://example.internal/ci/builder/web)
BOT=$(token spiffe://example.internal/ci/release-bot)
STALE_BOT=$(token spiffe://example.internal/ci/release-bot --age 600)
READER=$(token spiffe://example.internal/apps/web)
REG=docker://127.0.0.1:$LISTEN_PORT
TAG=$(ls "$DIR/image" >/dev/null && python3 -c "import json;print(json.load(open('$DIR/image/index.json'))['manifests'][0]['annotations']['org.opencontainers.image.ref.name'])")

step() { # description, skopeo arguments...
  local what=$1; shift
  if out=$(skopeo_ "$@" 2>&1); then
    printf '  %-48s -> ok\n' "$what"
  else
    printf '  %-48s -> refused: %s\n' "$what" "$(echo "$out" | grep -oE 'StatusCode: [0-9]+|(policy|token)_[a-z_]+' | sort -u | tr '\n' ' ')"
  fi
}
echo
echo "skopeo through meshward (http://127.0.0.1:$LISTEN_PORT) to docker-registry:"
step "builder pushes the image to dev/" copy --dest-tls-verify=false --dest-registry-token "$BUILDER" "oci:$DIR/image:$TAG" "$REG/dev/meshward:$TAG"
step "builder pushes the image to prod/" copy --dest-tls-verify=false --dest-registry-token "$BUILDER" "oci:$DIR/image:$TAG" "$REG/prod/meshward:$TAG"
step "release bot promotes with a 10-minute-old token" copy --src-tls-verify=false --dest-tls-verify=false --src-registry-token "$STALE_BOT" --dest-registry-token "$STALE_BOT" "$REG/dev/meshward:$TAG" "$REG/prod/meshward:$TAG"
step "release bot promotes dev/ -> prod/" copy --src-tls-verify=false --dest-tls-verify=false --src-registry-token "$BOT" --dest-registry-token "$BOT" "$REG/dev/meshward:$TAG" "$REG/prod/meshward:$TAG"
step "reader pulls from prod/" copy --src-tls-verify=false --src-registry-token "$READER" "$REG/prod/meshward:$TAG" "oci:$DIR/pulled:$TAG"
step "reader pushes to dev/" copy --dest-tls-verify=false --dest-registry-token "$READER" "oci:$DIR/image:$TAG" "$REG/dev/reader:$TAG"
echo
echo "Manifest writes in the audit trail (who, under which rule):"
grep -o '{"type":"decision".*' "$DIR/envoy.log" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r["method"] == "PUT" and "/manifests/" in (r["path"] or ""):
        print("  %-5s %-22s %-44s %s" % (r["decision"], r["rule"], r["subject"], r["path"]))'
echo
echo "Logs: $DIR/envoy.log, $DIR/registry.log. Everything is stopped now."
