#!/usr/bin/env python3
"""Envoy load benchmark: meshward against Envoy's native filters (the "Method" of performance.md).

Every setup runs in its own Envoy, all from the same binary, each with `--concurrency 1`, a
`direct_response` 200 route (no upstream), Envoy pinned to core 0 and wrk to core 1:

  passthrough            router only
  noop-wasm              a wasm filter that reads one header (benches/envoy/noop): the floor for wasm
  floor                  the least any token filter must do (benches/envoy/floor): reads token, method,
                         path and authority (one host call each), looks the token up in a map, sets one
                         identity header, counts one metric; no crypto, no policy (target 1's baseline)
  floor-map              the same, reading the whole header map in one host call (the cheaper of the
                         two is the floor of the summary)
  jwt+rbac               native jwt_authn (jwt_cache_config) + rbac, a policy equivalent to meshward's
  meshward-hot           meshward, the same 100 rules, token cache on (default settings)
  meshward-hot-noaudit   the same with audit_allow_sample_rate 0 (informational: the audit's share)
  jwt+rbac-nocache-ALG   jwt_authn without cache + the same rbac, for EdDSA, ES256, RS256, PS256, ES384
  meshward-cold-ALG      meshward with token_cache_entries 0, for the same algorithms
  meshward-hot@NAME      with --variant NAME=MODULE: the hot setup with another build of the module

The cold path re-verifies the one token of each request (both caches off): the same work as a new
token on every request, without a token list. The policy is benches/decision.rs's 100-rule bundle
(one rule allows the benchmarked request; the others are near misses under the same host, method
and path), and the rbac policies are translated from it rule by rule. Each Envoy starts once; the
setups are then run interleaved (round 1: every setup, round 2: every setup, ...), the first round
is discarded as warm-up, and the table shows medians: requests/s from wrk, and Envoy's CPU per
request (utime + stime from /proc over the run, divided by the completed requests). A run fails on
any non-2xx response or socket error. Envoys log at `warning` (Istio's default), so the plugin's
per-request audit lines are formatted but not written.

Once, before the load runs, an Envoy with meshward and a 10,000-rule bundle is started to show how
long configuration takes (time to /ready, time to the first allowed request, the plugin's
`policy_load` line) and how much memory the VM takes: after configuration, and after 10,000
requests with distinct tokens have filled the token cache (target 5: under 16 MiB with 10,000 rules
and 10,000 cached tokens). `--config-only` runs only this figure.

Python 3.11 standard library only. Needs wrk (Debian: apt-get install -y wrk) and taskset.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The benchmarked request and its caller, as in benches/decision.rs.
AUDIENCE = "orders.prod.svc.cluster.local"
SUBJECT = "spiffe://prod.example/ns/checkout/sa/frontend"
AUTHORITY = "orders.prod.svc.cluster.local:8080"
PATH = "/api/v1/orders/12345?expand=items"
MATCHING_RULE = "allow-checkout-read-orders"
TOKEN_CLAIMS = {"tenant": "acme", "scope": "orders:read orders:list"}
# Tokens every auth setup must deny (403): another caller, and the right caller of another tenant
# (so that the rbac translation of claims is checked too).
DENIED = {"other subject": {"sub": "spiffe://prod.example/ns/intruder/sa/default"},
          "other tenant": {"tenant": "globex"}}
ALGORITHMS = ["EdDSA", "ES256", "RS256", "PS256", "ES384"]
# Cold path targets (performance.md): ratio to jwt_authn without cache; None: reported only.
COLD_TARGETS = {"EdDSA": 0.6, "ES256": 0.8, "RS256": 0.8, "PS256": None, "ES384": None}
RULES = 100
CONFIG_RULES = 10_000
# Distinct tokens cached for the memory figure, and how long sending them may take.
CONFIG_TOKENS = 10_000
CONFIG_TOKENS_TIMEOUT_S = 300.0

ENVOY_CORE = "0"
WRK_CORE = "1"
# jwt_authn's payload in dynamic metadata: namespace and key.
JWT_METADATA = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "jwt_payload"
READY_TIMEOUT_S = 60.0


class BenchError(Exception):
    """A setup that does not start or does not behave: the run stops."""


# ---------------------------------------------------------------------------------------------
# The bundle (a port of benches/decision.rs's generator, so both benchmarks measure one policy)


def issuer_url(alg: str) -> str:
    return f"https://issuer-{alg.lower()}.prod.example"


def service_host(service: int) -> str:
    return AUDIENCE if service == 0 else f"svc-{service}.prod.svc.cluster.local"


def other_rule(i: int) -> dict:
    """The i-th rule that does not match the benchmarked request (see benches/decision.rs)."""
    rid, host, kind = f"rule-{i}", service_host(i // 10), i % 10
    if kind == 0:  # same endpoint, other callers
        return {"id": rid, "hosts": [host], "methods": ["GET", "HEAD"],
                "paths": [{"prefix": "/api/v1/orders"}],
                "subjects": [f"spiffe://prod.example/ns/team-{i % 97}/sa/*",
                             f"spiffe://prod.example/ns/team-{i}/sa/worker"]}
    if kind == 1:  # other resources of the service
        return {"id": rid, "hosts": [host], "methods": ["GET", "POST", "PUT"],
                "paths": [{"prefix": f"/api/v1/resource-{i}"}, {"exact": f"/api/v2/resource-{i}/status"}],
                "subjects": [SUBJECT]}
    if kind == 2:  # a longer template under the same prefix
        return {"id": rid, "hosts": [host], "methods": ["GET"],
                "paths": [{"template": "/api/v1/orders/{id}/items"}], "subjects": [SUBJECT]}
    if kind == 3:  # a deny rule for quarantined workloads
        return {"id": rid, "effect": "deny", "hosts": [host], "methods": ["*"],
                "paths": [{"prefix": "/admin"}, {"prefix": "/api/v1/orders"}],
                "subjects": [f"spiffe://prod.example/ns/quarantine-{i}/**"]}
    if kind == 4 and i == 4:  # monitoring may read any host
        return {"id": rid, "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
                "subjects": ["spiffe://prod.example/ns/monitoring/sa/*"]}
    if kind == 4:  # wildcard hosts of a staging environment
        return {"id": rid, "hosts": [f"*.s-{i // 10}.staging.svc.cluster.local"], "methods": ["*"],
                "paths": [{"prefix": "/"}], "subjects": ["**"]}
    if kind == 5:  # same path, write methods only
        return {"id": rid, "hosts": [host], "methods": ["POST", "DELETE"],
                "paths": [{"prefix": "/api/v1/orders"}], "subjects": [SUBJECT]}
    if kind == 6:  # this exact path, an auditor
        return {"id": rid, "hosts": [host], "methods": ["GET"], "paths": [{"exact": "/api/v1/orders/12345"}],
                "subjects": [f"spiffe://prod.example/ns/team-{i}/sa/auditor"]}
    if kind == 7:  # the right caller, another tenant
        return {"id": rid, "hosts": [host], "methods": ["GET"], "paths": [{"prefix": "/api/v1/orders"}],
                "subjects": [SUBJECT], "claims": [{"claim": "tenant", "equals": f"tenant-{i}"}]}
    if kind == 8:  # the right caller, a scope it lacks
        return {"id": rid, "hosts": [host], "methods": ["GET", "HEAD"], "paths": [{"prefix": "/api/v1"}],
                "subjects": ["spiffe://prod.example/ns/checkout/sa/*"], "scopes": ["orders:admin"]}
    return {"id": rid, "hosts": [host], "methods": ["GET"],  # another API version
            "paths": [{"template": "/api/v2/{name}/status"}], "subjects": ["**"]}


def policy_rules(count: int) -> list[dict]:
    """`count` rules, exactly one of which (MATCHING_RULE, sixth) allows the benchmarked request."""
    matching = {"id": MATCHING_RULE, "hosts": [AUDIENCE], "methods": ["GET", "HEAD"],
                "paths": [{"prefix": "/api/v1/orders"}], "subjects": ["spiffe://prod.example/ns/checkout/sa/*"],
                "claims": [{"claim": "tenant", "equals": "acme"}], "scopes": ["orders:read"]}
    rules = [other_rule(i) for i in range(count - 1)]
    rules.insert(min(len(rules), 5), matching)
    return rules


def bundle(name: str, rules: list[dict], jwks: dict[str, dict], settings: dict) -> str:
    issuers = [{"name": f"issuer-{alg.lower()}", "issuer": issuer_url(alg), "audiences": [AUDIENCE],
                "algorithms": [alg], "jwks": jwks[alg]} for alg in ALGORITHMS]
    return json.dumps({"name": name, "version": "bench", "issuers": issuers, "rules": rules,
                       "settings": settings})


# ---------------------------------------------------------------------------------------------
# The same policy for Envoy's rbac filter


def glob_regex(glob: str) -> str:
    """A meshward glob as an RE2 regex (Envoy matches regexes against the whole value)."""
    parts = re.split(r"(\*\*|\*)", glob)
    return "".join({"**": ".*", "*": "[^/]*"}.get(p, re.escape(p)) for p in parts)


def template_regex(template: str) -> str:
    """A path template: `{name}` or `*` one segment, `{name:**}` one or more, `**` zero or more."""
    out = []
    for segment in template.split("/")[1:]:
        if segment == "**":
            out.append("(/.*)?")
        elif re.fullmatch(r"\{\w+:\*\*\}", segment):
            out.append("(/[^/]+)+")
        elif segment == "*" or re.fullmatch(r"\{\w+\}", segment):
            out.append("/[^/]+")
        else:
            out.append("/" + re.escape(segment))
    return "".join(out)


def or_rules(permissions: list[dict]) -> dict:
    return permissions[0] if len(permissions) == 1 else {"or_rules": {"rules": permissions}}


def or_ids(principals: list[dict]) -> dict:
    return principals[0] if len(principals) == 1 else {"or_ids": {"ids": principals}}


def string_match(pattern: str) -> dict:
    return {"safe_regex": {"regex": glob_regex(pattern)}} if "*" in pattern else {"exact": pattern}


def header(name: str, match: dict) -> dict:
    return {"header": {"name": name, "string_match": match}}


def host_permission(host: str) -> dict | None:
    """Hosts are case-insensitive; a host without a port matches any port."""
    if host == "*":
        return None
    if host.startswith("*."):
        regex = "(?i)[^:/]+" + re.escape(host[1:]) + "(:[0-9]+)?"  # one or more labels, any port
        return header(":authority", {"safe_regex": {"regex": regex}})
    if ":" in host:
        return header(":authority", {"exact": host, "ignore_case": True})
    return or_rules([header(":authority", {"exact": host, "ignore_case": True}),
                     header(":authority", {"prefix": host + ":", "ignore_case": True})])


def path_permission(path: dict) -> dict:
    """Paths match without the query; a prefix is segment-aware (`/a` is `/a` or under `/a/`)."""
    if "exact" in path:
        return {"url_path": {"path": {"exact": path["exact"]}}}
    if "template" in path:
        return {"url_path": {"path": {"safe_regex": {"regex": template_regex(path["template"])}}}}
    prefix = path["prefix"].rstrip("/")
    if not prefix:
        return {"url_path": {"path": {"prefix": "/"}}}
    return or_rules([{"url_path": {"path": {"exact": prefix}}},
                     {"url_path": {"path": {"prefix": prefix + "/"}}}])


def claim_principal(claim: str, match: dict) -> dict:
    return {"metadata": {"filter": JWT_METADATA, "path": [{"key": PAYLOAD_KEY}, {"key": claim}],
                         "value": {"string_match": match}}}


def rbac_policy(rule: dict) -> dict:
    """One meshward rule as one rbac policy; refuses rule fields it does not translate."""
    unsupported = set(rule) - {"id", "effect", "hosts", "methods", "paths", "subjects", "claims", "scopes"}
    if unsupported:
        raise BenchError(f"rule {rule['id']}: no rbac translation for {sorted(unsupported)}")
    permissions = []
    hosts = [host_permission(h) for h in rule["hosts"]]
    if None not in hosts:
        permissions.append(or_rules(hosts))
    if "*" not in rule["methods"]:
        permissions.append(or_rules([header(":method", {"exact": m}) for m in rule["methods"]]))
    permissions.append(or_rules([path_permission(p) for p in rule["paths"]]))
    principals = [or_ids([claim_principal("sub", string_match(s)) for s in rule["subjects"]])]
    for claim in rule.get("claims", []):
        principals.append(claim_principal(claim["claim"], {"exact": claim["equals"]}))
    for scope in rule.get("scopes", []):
        # `scope` is a space-separated string: the scope must be one of its words.
        regex = "(.* )?" + re.escape(scope) + "( .*)?"
        principals.append(claim_principal("scope", {"safe_regex": {"regex": regex}}))
    return {"permissions": [{"and_rules": {"rules": permissions}}],
            "principals": [{"and_ids": {"ids": principals}}]}


def rbac_filters(rules: list[dict]) -> list[dict]:
    """A DENY rbac filter, then an ALLOW one (deny overrides allow, anything else is denied).
    Envoy evaluates policies in name order: the names keep the bundle's order."""
    filters = []
    for action, effect in (("DENY", "deny"), ("ALLOW", "allow")):
        policies = {f"{n:05d}-{r['id']}": rbac_policy(r) for n, r in enumerate(rules)
                    if r.get("effect", "allow") == effect}
        filters.append({"name": f"rbac-{effect}", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies}}})
    return filters


def jwt_authn_filter(alg: str, jwks: dict, cache: bool) -> dict:
    provider = {"issuer": issuer_url(alg), "audiences": [AUDIENCE],
                "local_jwks": {"inline_string": json.dumps(jwks)},
                # The payload in dynamic metadata, where rbac reads `sub` and the other claims.
                "payload_in_metadata": PAYLOAD_KEY,
                # Keep the Authorization header, as meshward does by default.
                "forward": True}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}}


def wasm_filter(name: str, module: Path, configuration: str | None) -> dict:
    config = {"name": name, "root_id": name, "failure_policy": "FAIL_CLOSED",
              "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": str(module)}}}}
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": configuration}
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}


def bootstrap(filters: list[dict]) -> dict:
    """Admin and listener on 127.0.0.1 port 0 (Envoy binds free ports; we ask it which)."""
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                    ".HttpConnectionManager",
           "stat_prefix": "bench",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]}]},
           "http_filters": [*filters, router]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}]}}


# ---------------------------------------------------------------------------------------------
# Setups and running Envoy


@dataclass
class Setup:
    name: str
    filters: list[dict]
    alg: str = "EdDSA"  # whose token wrk sends (every setup gets the same request)
    auth: bool = False  # must deny the DENIED tokens (403) and a request without a token (401)
    # The token cache's (hits, misses) counters, checked after every run, and whether it must hit.
    cache_stats: tuple[str, str] | None = None
    cached: bool = False
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    core: list[float] = field(default_factory=list)  # Envoy's CPU time over wall time: ~1 when saturated


MESHWARD_CACHE = ("wasmcustom.meshward.token_cache_hits_total", "wasmcustom.meshward.token_cache_misses_total")
JWT_CACHE = ("http.bench.jwt_authn.jwt_cache_hit", "http.bench.jwt_authn.jwt_cache_miss")


class Envoy:
    """One Envoy process on core 0; its admin and listener ports are read back once it is up."""

    def __init__(self, binary: str, workdir: Path, name: str, config: dict, wasm_info: bool = False):
        self.name = name
        self.config_path = workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"{name}.log"
        admin_path = workdir / f"{name}.admin"
        command = ["taskset", "-c", ENVOY_CORE, binary, "-c", str(self.config_path), "--concurrency", "1",
                   "--disable-hot-restart", "--admin-address-path", str(admin_path), "-l", "warning"]
        if wasm_info:  # the plugin's info lines (policy_load); only for an Envoy that serves a few requests
            command += ["--component-log-level", "wasm:info"]
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            # Its own session: Ctrl-C reaches this script only, which stops Envoy in `finally`.
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        try:
            self.ready_s = self._wait_ready(admin_path)
            # taskset and the venv's launcher exec Envoy: the pid must be Envoy's, for its CPU time.
            comm = Path(f"/proc/{self.process.pid}/comm").read_text().strip()
            if comm != "envoy":
                raise BenchError(f"{name}: pid {self.process.pid} is {comm!r}, not envoy (a wrapper that forks?)")
            listeners = json.loads(self.admin("/listeners?format=json")[1])
            self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        except BaseException:  # the caller never gets this Envoy to stop: stop it here (Ctrl-C too)
            self.stop()
            raise

    def _wait_ready(self, admin_path: Path) -> float:
        deadline = self.started + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name}: Envoy exited ({self.process.returncode})\n{self.log_tail()}")
            if admin_path.exists() and admin_path.read_text().strip():
                host, port = admin_path.read_text().strip().rsplit(":", 1)
                self.admin_address = (host, int(port))
                try:
                    if self.admin("/ready")[0] == 200:
                        return time.monotonic() - self.started
                except OSError:
                    pass
            time.sleep(0.005)
        raise BenchError(f"{self.name}: not ready after {READY_TIMEOUT_S:.0f} s\n{self.log_tail()}")

    def admin(self, path: str) -> tuple[int, str]:
        return http_get(self.admin_address, path, {})

    def request(self, token: str | None) -> int:
        headers = {"Host": AUTHORITY, **({"authorization": f"Bearer {token}"} if token else {})}
        return http_get(("127.0.0.1", self.port), PATH, headers)[0]

    def requests(self, tokens: list[str], deadline: float) -> dict[int, int]:
        """The benchmarked request once with each token, on one kept-alive connection, until
        `deadline` (time.monotonic()); the count of each status."""
        statuses: dict[int, int] = {}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for token in tokens:
                if time.monotonic() > deadline:
                    break
                connection.request("GET", PATH, headers={"Host": AUTHORITY, "authorization": f"Bearer {token}"})
                response = connection.getresponse()
                response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
        finally:
            connection.close()
        return statuses

    def counters(self, names: tuple[str, ...]) -> list[int]:
        text = self.admin("/stats?filter=" + "|".join(re.escape(n) for n in names) + "$")[1]
        values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        missing = [n for n in names if n not in values]
        if missing:
            raise BenchError(f"{self.name}: no stats {missing}")
        return [int(values[n]) for n in names]

    def settled_counters(self, names: tuple[str, ...], before: list[int], requests: int) -> list[int]:
        """`counters` once they account for `requests` more (or after 3 s): meshward hands its
        per-request counters to Envoy at most once a second."""
        deadline = time.monotonic() + 3
        while True:
            after = self.counters(names)
            if sum(after) - sum(before) >= requests or time.monotonic() > deadline:
                return after
            time.sleep(0.1)

    def cpu_ticks(self) -> int:
        """utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat), in clock ticks."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3, after `(comm)`
        return int(fields[11]) + int(fields[12])

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def http_get(address: tuple[str, int], path: str, headers: dict) -> tuple[int, str]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def run_cli(cli: str, *args: str) -> str:
    result = subprocess.run([cli, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{cli} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def mint(cli: str, key: Path, alg: str, changes: dict[str, str], jti: str, count: int = 1) -> str:
    """A token of the benchmarked caller (TOKEN_CLAIMS), with `changes` to its claims; with `count`,
    that many distinct tokens, one a line (the n-th with jti `JTI-n`), minted by one CLI run."""
    claims = {"sub": SUBJECT, **TOKEN_CLAIMS, **changes}
    subject = claims.pop("sub")
    return run_cli(cli, "dev", "token", "--key", str(key), "--iss", issuer_url(alg), "--sub", subject,
                   "--aud", AUDIENCE, "--ttl", "3600", "--jti", jti, "--count", str(count),
                   *(a for name, value in claims.items() for a in ("--claim", f"{name}={value}")))


# ---------------------------------------------------------------------------------------------
# wrk


def wrk(envoy: Envoy, token: str, seconds: int, connections: int) -> tuple[float, int]:
    """Runs wrk on core 1 against one Envoy; returns (requests/s, completed requests)."""
    command = ["taskset", "-c", WRK_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
               "-H", f"authorization: Bearer {token}", "-H", f"Host: {AUTHORITY}",
               f"http://127.0.0.1:{envoy.port}{PATH}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    out = result.stdout
    if result.returncode != 0:
        raise BenchError(f"wrk failed against {envoy.name}: {result.stderr.strip()}\n{out}")
    # wrk prints these two lines only when there are any.
    for problem in ("Non-2xx or 3xx responses", "Socket errors"):
        if problem in out:
            raise BenchError(f"{envoy.name}: wrk reports {problem.lower()}:\n{out}\n{envoy.log_tail()}")
    completed = re.search(r"^\s*(\d+) requests in", out, re.M)
    rate = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    if not completed or not rate:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    return float(rate.group(1)), int(completed.group(1))


# ---------------------------------------------------------------------------------------------


def cpu_times() -> list[int]:
    """The machine's CPU times (the `cpu` line of /proc/stat), in clock ticks."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def cpu_shares(before: list[int], after: list[int]) -> tuple[float, float]:
    """(busy, stolen) shares of the CPU time between two samples of cpu_times()."""
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal (guest is in user)
    return 1 - (delta[3] + delta[4]) / total, delta[7] / total


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envoy", default=str(REPO / ".venv/bin/envoy"))
    parser.add_argument("--wasm", default=str(REPO / "target/meshward.wasm"), help="meshward's module")
    parser.add_argument("--noop-wasm", default=str(
        REPO / "target/noop-wasm/wasm32-wasip1/release/meshward_bench_noop.wasm"), help="the no-op module")
    parser.add_argument("--floor-wasm", default=str(
        REPO / "target/floor-wasm/wasm32-wasip1/release/meshward_bench_floor.wasm"), help="the floor module")
    parser.add_argument("--cli", default=str(REPO / "target/debug/meshward"), help="meshward's CLI")
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the first discarded (default 5)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, 2 rounds")
    parser.add_argument("--only", metavar="SETUP,...",
                        help="run only these setups (passthrough, noop-wasm and floor, the baselines, always run)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=MODULE",
                        help="also measure another build of meshward's module in the hot setup, as "
                             "meshward-hot@NAME, interleaved with the rest (removal experiments: build the "
                             "module without one step and compare); repeatable")
    parser.add_argument("--config-only", action="store_true",
                        help="only the configuration figure (10,000 rules: time, and memory with 10,000 "
                             "cached tokens); no load runs, no wrk")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1, 2
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is warm-up)")
    return args


def check_tools(args: argparse.Namespace) -> None:
    missing = []
    if not shutil.which("wrk") and not args.config_only:
        missing.append("wrk (Debian: apt-get install -y wrk)")
    if not shutil.which("taskset"):
        missing.append("taskset (Debian: util-linux)")
    modules = ("envoy", "wasm", "cli") if args.config_only else ("envoy", "wasm", "noop_wasm", "floor_wasm", "cli")
    for option in modules:
        if not Path(getattr(args, option)).is_file():
            missing.append(f"--{option.replace('_', '-')} {getattr(args, option)} (not a file)")
    if os.cpu_count() is None or os.cpu_count() < 2:
        missing.append("a second core (Envoy and wrk run on cores 0 and 1)")
    if missing:
        raise BenchError("missing: " + "; ".join(missing))


def snapshot(module: str, workdir: Path) -> Path:
    """A copy of a module, so that a rebuild during the run cannot change what is measured."""
    copy = workdir / Path(module).name
    shutil.copyfile(module, copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()[:12]
    print(f"module {module}: {copy.stat().st_size} bytes, sha256 {digest}...")
    return copy


def make_setups(jwks: dict, meshward: Path, noop: Path, floor: Path,
                variants: dict[str, Path] | None = None) -> list[Setup]:
    rules = policy_rules(RULES)
    rbac = rbac_filters(rules)

    def meshward_filter(settings: dict, module: Path = meshward) -> list[dict]:
        return [wasm_filter("meshward", module, bundle(f"bench-{RULES}", rules, jwks, settings))]

    setups = [
        Setup("passthrough", []),
        Setup("noop-wasm", [wasm_filter("noop", noop, None)]),
        Setup("floor", [wasm_filter("floor", floor, "headers")]),
        Setup("floor-map", [wasm_filter("floor", floor, "map")]),
        Setup("jwt+rbac", [jwt_authn_filter("EdDSA", jwks["EdDSA"], cache=True), *rbac], auth=True,
              cache_stats=JWT_CACHE, cached=True),
        Setup("meshward-hot", meshward_filter({}), auth=True, cache_stats=MESHWARD_CACHE, cached=True),
        Setup("meshward-hot-noaudit", meshward_filter({"audit_allow_sample_rate": 0}), auth=True,
              cache_stats=MESHWARD_CACHE, cached=True),
    ]
    for name, module in (variants or {}).items():
        setups.append(Setup(f"meshward-hot@{name}", meshward_filter({}, module), auth=True,
                            cache_stats=MESHWARD_CACHE, cached=True))
    for alg in ALGORITHMS:
        setups.append(Setup(f"jwt+rbac-nocache-{alg}", [jwt_authn_filter(alg, jwks[alg], cache=False), *rbac],
                            alg=alg, auth=True))
        setups.append(Setup(f"meshward-cold-{alg}", meshward_filter({"token_cache_entries": 0}), alg=alg,
                            auth=True, cache_stats=MESHWARD_CACHE))
    return setups


def check_setup(setup: Setup, envoy: Envoy, tokens: dict, denied_tokens: dict) -> None:
    """The benchmarked request is allowed; for auth setups, other callers and no token are not."""
    expected = {"allowed": 200}
    got = {"allowed": envoy.request(tokens[setup.alg])}
    if setup.auth:
        expected |= {"no token": 401, **{case: 403 for case in denied_tokens[setup.alg]}}
        got |= {"no token": envoy.request(None),
                **{case: envoy.request(token) for case, token in denied_tokens[setup.alg].items()}}
    if got != expected:
        raise BenchError(f"{setup.name}: expected {expected}, got {got}\n{envoy.log_tail()}")


def check_cache(setup: Setup, before: list[int], after: list[int], requests: int) -> None:
    """The cached setups answer (almost) every request from their cache, the uncached never."""
    hits, misses = after[0] - before[0], after[1] - before[1]
    if setup.cached and hits < 0.99 * requests:
        raise BenchError(f"{setup.name}: {hits} cache hits, {misses} misses for {requests} requests")
    if not setup.cached and (hits > 0 or misses < requests):
        raise BenchError(f"{setup.name}: {hits} cache hits, {misses} misses for {requests} requests (cache off?)")


def vm_memory(envoy: Envoy) -> int | None:
    """The gauge meshward.vm_memory_bytes: the largest linear memory of the plugin's VMs."""
    text = envoy.admin("/stats?filter=meshward.vm_memory_bytes$")[1]
    found = re.search(r"meshward\.vm_memory_bytes: (\d+)", text)
    return int(found.group(1)) if found else None


def configuration_figure(args, workdir: Path, jwks: dict, meshward: Path, token: str,
                         many_tokens: list[str]) -> list[str]:
    """Starts meshward with a 10,000-rule bundle: how long until it is ready and serves, and its
    VM memory after configuration and after caching `many_tokens` (distinct, each allowed)."""
    configuration = bundle(f"bench-{CONFIG_RULES}", policy_rules(CONFIG_RULES), jwks, {})
    envoy = Envoy(args.envoy, workdir, "config-10k",
                  bootstrap([wasm_filter("meshward", meshward, configuration)]), wasm_info=True)
    try:
        while envoy.request(token) != 200:
            if time.monotonic() - envoy.started > READY_TIMEOUT_S:
                raise BenchError(f"config-10k: the benchmarked request is not allowed\n{envoy.log_tail()}")
            time.sleep(0.005)
        serving_s = time.monotonic() - envoy.started
        memory = vm_memory(envoy)
        sending = time.monotonic()
        statuses = envoy.requests(many_tokens, sending + CONFIG_TOKENS_TIMEOUT_S)
        sending_s = time.monotonic() - sending
        cached = envoy.settled_counters(MESHWARD_CACHE, [0, 0], sum(statuses.values()))
        memory_tokens = vm_memory(envoy)
    finally:
        envoy.stop()
    sent = sum(statuses.values())
    if statuses.get(200, 0) != sent:
        raise BenchError(f"config-10k: distinct tokens answered {statuses}, expected 200 each\n{envoy.log_tail()}")
    lines = [f"{CONFIG_RULES:,}-rule bundle ({len(configuration):,} bytes): /ready after "
             f"{envoy.ready_s * 1000:.0f} ms, first allowed request after {serving_s * 1000:.0f} ms "
             "(from process start)"]
    if memory is not None:
        lines.append(f"  meshward.vm_memory_bytes after the first request: {memory:,} ({memory / 2**20:.1f} MiB)")
    lines.append(f"  {sent:,} of {len(many_tokens):,} distinct tokens sent in {sending_s:.1f} s "
                 f"(token cache: {cached[0]:,} hits, {cached[1]:,} misses)")
    if memory_tokens is not None:
        lines.append(f"  meshward.vm_memory_bytes after them: {memory_tokens:,} ({memory_tokens / 2**20:.1f} MiB)")
    # One `policy_load` line per VM that Envoy configures (three at --concurrency 1). Newer builds
    # of the plugin add `configure_ms` and `memory_bytes`.
    marker = '{"type":"policy_load"'
    records = [json.loads(line[line.index(marker):])
               for line in envoy.log_path.read_text(errors="replace").splitlines() if marker in line]
    for record in records:
        extra = {k: record[k] for k in ("configure_ms", "memory_bytes", "signature_backend") if k in record}
        lines.append(f"  policy_load: rules={record.get('rules')} issuers={record.get('issuers')}"
                     + "".join(f" {k}={v}" for k, v in extra.items()))
    if not records:
        lines.append("  (no policy_load line in Envoy's log)")
    configure_ms = [r["configure_ms"] for r in records if "configure_ms" in r]
    if configure_ms:
        verdict = "PASS" if max(configure_ms) < 100 else "MISS"
        lines.append(f"target: a {CONFIG_RULES:,}-rule bundle configures in under 100 ms: "
                     f"slowest VM {max(configure_ms)} ms  {verdict}")
    memory_bytes = [r["memory_bytes"] for r in records if "memory_bytes" in r]
    if memory_bytes:
        lines.append(f"  VM memory after configuration: {max(memory_bytes) / 2**20:.1f} MiB (largest VM)")
    if memory_tokens is not None:
        mib = memory_tokens / 2**20
        complete = sent == len(many_tokens)
        verdict = ("PASS" if mib < 16 else "MISS") if complete else f"INCOMPLETE ({sent:,} tokens sent in time)"
        lines.append(f"target: VM memory under 16 MiB with {CONFIG_RULES:,} rules and {len(many_tokens):,} "
                     f"cached tokens: {mib:.1f} MiB  {verdict}")
    return lines


def print_report(setups: list[Setup], config_lines: list[str], startup: dict[str, float]) -> None:
    rps = {s.name: statistics.median(s.rps) for s in setups}
    cpu = {s.name: statistics.median(s.cpu_us) for s in setups}

    print(f"\n{'setup':<24} {'req/s':>8} {'spread':>7} {'x pass':>7} {'x noop':>7} {'CPU us/req':>11} "
          f"{'core':>5} {'ready ms':>9}")
    for s in setups:
        spread = (max(s.rps) - min(s.rps)) / rps[s.name]
        print(f"{s.name:<24} {rps[s.name]:>8,.0f} {spread:>7.1%} {rps[s.name] / rps['passthrough']:>7.2f} "
              f"{rps[s.name] / rps['noop-wasm']:>7.2f} {cpu[s.name]:>11.1f} {statistics.median(s.core):>5.0%} "
              f"{startup[s.name] * 1000:>9.0f}")
    print("spread: (max - min) / median of the measured rounds; core: Envoy's CPU time / wall time (under\n"
          "~95%: Envoy was not the bottleneck, or shared its core); ready: process start to /ready")

    print("\nTargets (performance.md): ratio of median requests/s; 'by CPU' is the same ratio computed from\n"
          "CPU per request (baseline / setup), less sensitive to a shared core")
    # Target 1's baseline: the cheaper way for the floor filter to read the request.
    floors = [name for name in ("floor", "floor-map") if name in rps]
    floor = max(floors, key=lambda name: rps[name]) if floors else None
    targets = [(f"hot path / floor ({floor})", "meshward-hot", floor, 0.95)] if floor else []
    targets += [("floor / no-op wasm", floor, "noop-wasm", None),
                ("floor / jwt_authn (cached) + rbac", floor, "jwt+rbac", None)] if floor else []
    targets += [("hot path / no-op wasm", "meshward-hot", "noop-wasm", 0.95),
               ("hot path / jwt_authn (cached) + rbac", "meshward-hot", "jwt+rbac", 0.9)]
    # A removal experiment: how much faster meshward is without the step the variant leaves out.
    targets += [(f"{s.name} / meshward-hot", s.name, "meshward-hot", None)
                for s in setups if s.name.startswith("meshward-hot@")]
    targets += [(f"cold {alg} / jwt_authn no cache {alg}", f"meshward-cold-{alg}", f"jwt+rbac-nocache-{alg}",
                 COLD_TARGETS[alg]) for alg in ALGORITHMS]
    for label, measured, baseline, required in targets:
        if measured not in rps or baseline not in rps:
            continue  # not run (--only)
        ratio = rps[measured] / rps[baseline]
        verdict = "reported" if required is None else ("PASS" if ratio >= required else "MISS")
        need = "" if required is None else f">= {required:.2f}"
        print(f"  {label:<38} {ratio:>5.2f}  {need:<8} {verdict:<8}  by CPU {cpu[baseline] / cpu[measured]:.2f}")

    print("\nConfiguration:")
    for line in config_lines:
        print(f"  {line}")


def main() -> int:
    args = parse_args()
    check_tools(args)
    load = os.getloadavg()
    before = cpu_times()
    time.sleep(1)
    busy, steal = cpu_shares(before, cpu_times())
    print(f"before: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; over 1 s, CPU {busy:.0%} busy, "
          f"{steal:.0%} stolen by the hypervisor" + ("  (busy: expect noisy figures)" if busy > 0.1 else ""))
    if not args.config_only:
        print(f"{args.rounds} rounds (the first discarded) x {args.seconds} s, {args.connections} connections")
    envoys: dict[str, Envoy] = {}
    with tempfile.TemporaryDirectory(prefix="meshward-envoy-bench-") as tmp:
        workdir = Path(tmp)
        meshward = snapshot(args.wasm, workdir)
        jwks, tokens, denied_tokens = {}, {}, {}
        for alg in ALGORITHMS:
            key = workdir / f"key-{alg}.json"
            run_cli(args.cli, "dev", "keygen", "--alg", alg, "--kid", f"bench-{alg}", "--out", str(key))
            jwks[alg] = json.loads(run_cli(args.cli, "dev", "jwks", str(key)))
            tokens[alg] = mint(args.cli, key, alg, {}, f"bench-{alg}")
            denied_tokens[alg] = {case: mint(args.cli, key, alg, changes, f"bench-{alg}-{n}")
                                  for n, (case, changes) in enumerate(DENIED.items())}
        # The memory figure's distinct tokens: the benchmarked caller's, with ids cache-1, cache-2 ...
        many_tokens = mint(args.cli, workdir / "key-EdDSA.json", "EdDSA", {}, "cache", CONFIG_TOKENS).split()
        if args.config_only:
            config_lines = configuration_figure(args, workdir, jwks, meshward, tokens["EdDSA"], many_tokens)
            print("\nConfiguration:")
            for line in config_lines:
                print(f"  {line}")
            return 0
        noop, floor = snapshot(args.noop_wasm, workdir), snapshot(args.floor_wasm, workdir)
        variants = {}
        for variant in args.variant:
            name, _, module = variant.partition("=")
            if not name or not module:
                raise BenchError(f"--variant {variant}: expected NAME=MODULE")
            (workdir / f"variant-{name}").mkdir()
            variants[name] = snapshot(module, workdir / f"variant-{name}")
        setups = make_setups(jwks, meshward, noop, floor, variants)
        if args.only:
            wanted = {"passthrough", "noop-wasm", "floor", *args.only.split(","),
                      *(f"meshward-hot@{name}" for name in variants)}
            unknown = wanted - {s.name for s in setups}
            if unknown:
                raise BenchError(f"--only: no setup named {', '.join(sorted(unknown))}")
            setups = [s for s in setups if s.name in wanted]
        try:
            config_lines = configuration_figure(args, workdir, jwks, meshward, tokens["EdDSA"], many_tokens)
            for setup in setups:
                envoy = Envoy(args.envoy, workdir, setup.name, bootstrap(setup.filters))
                envoys[setup.name] = envoy
                check_setup(setup, envoy, tokens, denied_tokens)
            print(f"{len(envoys)} Envoys ready and checked")
            load_started = cpu_times()
            for round_number in range(1, args.rounds + 1):
                for setup in setups:
                    envoy = envoys[setup.name]
                    cache_before = envoy.counters(setup.cache_stats) if setup.cache_stats else None
                    ticks, started = envoy.cpu_ticks(), time.monotonic()
                    rps, requests = wrk(envoy, tokens[setup.alg], args.seconds, args.connections)
                    cpu_s = (envoy.cpu_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
                    core, cpu_us = cpu_s / (time.monotonic() - started), cpu_s / requests * 1e6
                    if setup.cache_stats:
                        check_cache(setup, cache_before, envoy.settled_counters(setup.cache_stats, cache_before,
                                                                                 requests), requests)
                    if round_number > 1:
                        setup.rps.append(rps)
                        setup.cpu_us.append(cpu_us)
                        setup.core.append(core)
                    print(f"round {round_number}/{args.rounds}{' (warm-up)' if round_number == 1 else ''} "
                          f"{setup.name:<24} {rps:>9,.0f} req/s {cpu_us:>7.1f} us/req {core:>5.0%} core",
                          flush=True)
            steal = cpu_shares(load_started, cpu_times())[1]
        finally:
            for envoy in envoys.values():
                envoy.stop()
    print(f"\nCPU stolen by the hypervisor during the load runs: {steal:.1%} (a cause of noise)")
    print_report(setups, config_lines, {name: e.ready_s for name, e in envoys.items()})
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)  # stop the Envoys on `kill` too
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; every Envoy stopped", file=sys.stderr)
        sys.exit(130)
