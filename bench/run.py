"""``make bench``: the gateway with its full chain against the aiohttp passthrough floor, in one run.

Uses the shared CPU-pinned harness (``../shared/bench``: nginx+Lua mock upstream, wrk,
target on core 0, load on core 1). The gateway runs as a user runs it — one uvicorn worker,
auth on, metering, SQLite request log, metrics — from ``bench/config.yaml``.

    python bench/run.py [--scenarios ns:1,ns:32,st:32] [--repeats 3] [--duration 10] [--no-routing-off]

Each round runs the floor, the gateway, and the gateway with ``routing.enabled: false``
(the resilience pipeline's cost is the ratio of the last two).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(os.environ.get("LLM_PROXY_BENCH_HARNESS", ROOT.parent / "shared" / "bench"))
FLOOR_VENV = Path("/opt/bench/py-venv")
FLOOR_PACKAGES = ["starlette", "uvicorn[standard]", "aiohttp", "orjson", "uvloop", "httptools"]
MASTER_KEY = "sk-bench-master-key-0123456789"


def ensure_setup() -> None:
    """The harness's system tools and the floor's venv (not LiteLLM: we do not compare to it here)."""
    lua = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")
    if not (shutil.which("wrk") and shutil.which("nginx") and lua.exists()):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx", "wrk", "libnginx-mod-http-lua"], check=True, env=env)
    if not (FLOOR_VENV / "bin" / "uvicorn").exists():
        subprocess.run([sys.executable, "-m", "venv", str(FLOOR_VENV)], check=True)
        subprocess.run([str(FLOOR_VENV / "bin" / "pip"), "install", "-q", *FLOOR_PACKAGES], check=True)


def harness(*args: str) -> None:
    subprocess.run([sys.executable, str(HARNESS / "bench.py"), *args], check=True, cwd=ROOT)


def harness_options(scenarios: str, repeats: str, duration: str) -> list[str]:
    """The load options every target of one comparison gets, so their figures are comparable."""
    return ["--scenarios", scenarios, "--repeats", repeats, "--duration", duration,
            "--model", "gpt-4o-mini", "--warmup", "3"]


def run_floor(name: str, out: Path, common: list[str]) -> Path:
    """The aiohttp passthrough: what any Python gateway on this machine could reach at best."""
    cmd = (f"{FLOOR_VENV}/bin/uvicorn passthrough_aiohttp:app --app-dir {HARNESS}/targets "
           "--host 127.0.0.1 --port {port} --loop uvloop --http httptools --no-access-log --log-level warning")
    harness("run", "--name", name, "--url", "http://127.0.0.1:18200", "--cmd", cmd, "--out", str(out), *common)
    return out


def gateway_cmd(checkout: Path, db_path: str, routing: bool | None = None) -> str:
    """How a checkout's gateway is started: only its console script and its bench config, so
    any build (whatever its package layout) can be measured."""
    env = (f"env LLM_PROXY__DATABASE__PATH={db_path} LLM_PROXY__PROVIDERS__OPENAI__BASE_URL={{upstream_v1}} "
           f"LLM_PROXY__PROVIDERS__SPARE__BASE_URL={{upstream_v1}} ")
    if routing is not None:
        env += f"LLM_PROXY__ROUTING__ENABLED={'true' if routing else 'false'} "
    return (f"{env}{checkout}/.venv/bin/llm-proxy serve --config {checkout}/bench/config.yaml "
            "--host 127.0.0.1 --port {port}")


def run_gateway(name: str, out: Path, common: list[str], cmd: str) -> Path:
    harness("run", "--name", name, "--url", "http://127.0.0.1:18500", "--cmd", cmd, "--api-key", MASTER_KEY,
            "--ready-path", "/health", "--out", str(out), *common)
    return out


def peak_rss_mb(run: dict) -> float:
    """The target's peak RSS from a harness result (VmHWM, else the sampled maximum)."""
    return (run.get("vmhwm_kb") or run.get("peak_rss_kb_sampled") or 0) / 1024


def run_round(name: str, results: Path, tmp: str, common: list[str]) -> Path:
    out = results / f"{name}.json"
    if name.startswith("floor"):
        return run_floor(name, out, common)
    routing = not name.startswith("norouting")
    return run_gateway(name, out, common, gateway_cmd(ROOT, f"{tmp}/{name}.db", routing))


def routing_cost(pairs: list[tuple[Path, Path]]) -> str:
    """Gateway with the resilience pipeline against the same gateway with routing off, per round."""
    ratios: dict[str, list[float]] = {}
    for on_path, off_path in pairs:
        on = json.loads(on_path.read_text())["summary"]
        off = json.loads(off_path.read_text())["summary"]
        for name, g in on.items():
            if name in off and not name.endswith("_c1"):
                ratios.setdefault(name, []).append(g["rps"] / off[name]["rps"])
    lines = ["| routing on / off | per round | median |", "|---|---|---|"]
    for name, values in ratios.items():
        lines.append(f"| {name} RPS ratio | {', '.join(f'{v:.3f}' for v in values)} | {statistics.median(values):.3f} |")
    return "\n".join(lines)


def summarize(pairs: list[tuple[Path, Path]]) -> str:
    """Per-round gateway/floor ratios and their medians: the machine is noisy, so only
    figures measured side by side are compared."""
    rows = []
    ratios: dict[str, list[float]] = {}
    for floor_path, gw_path in pairs:
        floor = json.loads(floor_path.read_text())["summary"]
        gw_run = json.loads(gw_path.read_text())
        rss_mb = peak_rss_mb(gw_run)
        for name, g in gw_run["summary"].items():
            f = floor.get(name)
            if f is None:
                continue
            if name.endswith("_c1"):
                value = g["p50_ms"] - f["p50_ms"]
                label = f"{name} added p50 ms"
            else:
                value = g["rps"] / f["rps"]
                label = f"{name} RPS ratio"
            ratios.setdefault(label, []).append(value)
            rows.append(f"| {gw_path.stem} | {name} | {g['rps']:.0f} | {f['rps']:.0f} | {g['p50_ms']:.3f} | "
                        f"{f['p50_ms']:.3f} | {rss_mb:.0f} | {g.get('errors', 0)} |")
    lines = ["| round | scenario | gateway RPS | floor RPS | gateway p50 ms | floor p50 ms | gateway peak RSS MB | errors |",
             "|---|---|---|---|---|---|---|---|", *rows, "", "| figure | per round | median |", "|---|---|---|"]
    for label, values in ratios.items():
        lines.append(f"| {label} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="ns:1,ns:32,st:32")
    parser.add_argument("--rounds", type=int, default=3, help="floor/gateway alternations")
    parser.add_argument("--repeats", default="2", help="harness repeats per round")
    parser.add_argument("--duration", default="8")
    parser.add_argument("--routing-off", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the gateway with routing.enabled=false each round (the pipeline's cost)")
    args = parser.parse_args()
    if not (HARNESS / "bench.py").exists():
        print(f"benchmark harness not found at {HARNESS} (set LLM_PROXY_BENCH_HARNESS)", file=sys.stderr)
        return 2
    ensure_setup()
    results = ROOT / "results"
    results.mkdir(exist_ok=True)
    common = harness_options(args.scenarios, args.repeats, args.duration)
    pairs, routing = [], []
    with tempfile.TemporaryDirectory(prefix="llm-proxy-bench-") as tmp:
        for i in range(1, args.rounds + 1):
            floor = run_round(f"floor-{i}", results, tmp, common)
            gateway = run_round(f"gateway-{i}", results, tmp, common)
            pairs.append((floor, gateway))
            if args.routing_off:
                routing.append((gateway, run_round(f"norouting-{i}", results, tmp, common)))
    report = summarize(pairs) + ("\n\n" + routing_cost(routing) if routing else "")
    (results / "summary.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
