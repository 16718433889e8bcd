#!/usr/bin/env python3
"""Instructions per request inside Envoy, counted by callgrind: a repeatable figure on a noisy machine.

Runs one setup of load.py (the same bootstrap, policy and tokens) in an Envoy under
`valgrind --tool=callgrind`, with counting off while Envoy starts and compiles the wasm module, then
on only while N requests are sent one after another on one connection. Two runs of the same setup
agree to about 0.05%, where CPU per request under wrk moves by 20-50% between rounds here; the
ratios of these counts track the CPU ratios of `make bench-envoy` (which stays the judge: counts
ignore cache misses and what wrk's concurrency does).

The split says where the instructions run: `envoy` is Envoy's own code (the host functions behind
every proxy-wasm call, the HTTP codec, the router), `jit` is code V8 generated (the wasm module and
V8's call wrappers), `libc` is memcpy, malloc and the like.

  benches/envoy/count.py meshward-hot floor-map noop-wasm jwt+rbac
  benches/envoy/count.py --module other.wasm meshward-hot   # a removal experiment: another build

Needs valgrind, Envoy from `make envoy` and the modules from `make bench-envoy`'s build steps.
"""

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import load

REPO = Path(__file__).resolve().parents[2]


def envoy_binary(launcher: str) -> str:
    """The Envoy executable itself: a venv's `envoy` is a Python launcher valgrind cannot follow."""
    path = Path(launcher)
    if path.read_bytes()[:2] != b"#!":
        return launcher
    found = sorted(path.resolve().parent.parent.glob("lib/python3*/site-packages/envoy/_bin/envoy"))
    if not found:
        raise load.BenchError(f"{launcher} is a script and its venv holds no envoy/_bin/envoy")
    return str(found[0])


def wait_ready(admin_path: Path, process: subprocess.Popen, deadline: float) -> tuple[str, int]:
    while not (admin_path.exists() and admin_path.read_text().strip()):
        if process.poll() is not None or time.time() > deadline:
            raise load.BenchError("Envoy did not start under valgrind")
        time.sleep(0.5)
    host, port = admin_path.read_text().strip().rsplit(":", 1)
    while True:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return host, int(port)
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            raise load.BenchError("Envoy was not ready under valgrind")
        time.sleep(1)


def admin_json(address: tuple[str, int], path: str) -> dict:
    conn = http.client.HTTPConnection(*address, timeout=60)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def split(profile: Path) -> dict[str, int]:
    """Instructions by where they ran (see the module doc)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", str(profile)], check=True,
                         capture_output=True, text=True).stdout
    totals = {"envoy": 0, "jit": 0, "libc": 0, "other": 0}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[1].startswith("(") or "PROGRAM" in line:
            continue
        try:
            count = int(fields[0].replace(",", ""))
        except ValueError:
            continue
        place = line.rsplit("[", 1)[-1]
        kind = ("jit" if place.startswith("???") else "envoy" if place.endswith("/envoy]")
                else "libc" if "libc.so" in place else "other")
        totals[kind] += count
    return totals


def count(args: argparse.Namespace, setup: load.Setup, token: str, workdir: Path) -> dict[str, int]:
    config = workdir / f"{setup.name}.json"
    config.write_text(json.dumps(load.bootstrap(setup.filters)))
    admin_path, profile = workdir / f"{setup.name}.admin", workdir / f"{setup.name}.callgrind"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file",
               f"--callgrind-out-file={profile}", envoy_binary(args.envoy), "-c", str(config),
               "--concurrency", "1", "--disable-hot-restart", "--admin-address-path", str(admin_path),
               "-l", "warning"]
    with open(workdir / f"{setup.name}.log", "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        admin = wait_ready(admin_path, process, time.time() + 600)
        listeners = admin_json(admin, "/listeners?format=json")
        port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        # Every setup gets the same request, token included, as under wrk in load.py.
        headers = {"Host": load.AUTHORITY, "authorization": f"Bearer {token}"}

        def send(n: int) -> None:
            for _ in range(n):
                conn.request("GET", load.PATH, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise load.BenchError(f"{setup.name}: status {response.status}, not 200")

        send(args.warmup)  # the token cached, the code paths compiled, before counting starts
        subprocess.run(["callgrind_control", "--instr=on", str(process.pid)], check=True, capture_output=True)
        send(args.requests)
        subprocess.run(["callgrind_control", "--instr=off", str(process.pid)], check=True, capture_output=True)
    finally:
        process.terminate()
        process.wait(timeout=300)
    return split(profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("setups", nargs="+", help="setup names of load.py (meshward-hot, floor-map, ...)")
    parser.add_argument("--envoy", default=str(REPO / ".venv/bin/envoy"))
    parser.add_argument("--module", default=str(REPO / "target/meshward.wasm"), help="meshward's module")
    parser.add_argument("--noop-wasm", default=str(
        REPO / "target/noop-wasm/wasm32-wasip1/release/meshward_bench_noop.wasm"))
    parser.add_argument("--floor-wasm", default=str(
        REPO / "target/floor-wasm/wasm32-wasip1/release/meshward_bench_floor.wasm"))
    parser.add_argument("--cli", default=str(REPO / "target/debug/meshward"))
    parser.add_argument("--requests", type=int, default=1000, help="requests counted (default 1000)")
    parser.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshward-count-") as tmp:
        workdir = Path(tmp)
        jwks, tokens = {}, {}
        for alg in load.ALGORITHMS:
            key = workdir / f"key-{alg}.json"
            load.run_cli(args.cli, "dev", "keygen", "--alg", alg, "--kid", f"bench-{alg}", "--out", str(key))
            jwks[alg] = json.loads(load.run_cli(args.cli, "dev", "jwks", str(key)))
            tokens[alg] = load.mint(args.cli, key, alg, {}, f"bench-{alg}")
        setups = {s.name: s for s in load.make_setups(jwks, Path(args.module), Path(args.noop_wasm),
                                                      Path(args.floor_wasm))}
        unknown = [name for name in args.setups if name not in setups]
        if unknown:
            raise load.BenchError(f"no setup named {', '.join(unknown)}")
        print(f"{'setup':<24} {'per request':>12} {'envoy':>9} {'jit':>9} {'libc':>9}")
        for name in args.setups:
            setup = setups[name]
            totals = count(args, setup, tokens[setup.alg], workdir)
            per = {k: v / args.requests for k, v in totals.items()}
            print(f"{name:<24} {sum(per.values()):>12,.0f} {per['envoy']:>9,.0f} {per['jit']:>9,.0f} "
                  f"{per['libc']:>9,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
