"""Two builds of the gateway (before / after a change) and the floor, alternated in one run.

The machine is shared and noisy, so two builds are only compared when they have been measured
side by side: each round runs the aiohttp floor and then both builds, and the order of the two
builds flips every round (round 1 before→after, round 2 after→before, ...) so neither always
gets the warmer or quieter slot. Ratios are computed per round, then their median is taken.

Each checkout is run only through its own console script, ``<checkout>/.venv/bin/llm-proxy``,
with its own ``<checkout>/bench/config.yaml``, so a build whose package layout has changed can be
measured too. Prepare the old build in a worktree with its own venv:

    git worktree add /tmp/llm-proxy-before d0f6e53
    cd /tmp/llm-proxy-before && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip \\
        'setuptools>=68' && .venv/bin/pip install -q -e .

then:

    python bench/compare.py --before /tmp/llm-proxy-before --after . \\
        [--scenarios ns:1,ns:32,st:32] [--rounds 3] [--repeats 3] [--duration 10] [--results DIR]

``--rounds`` is how many floor/before/after alternations run; ``--repeats`` and ``--duration``
are passed to the harness for each target in each round. Each harness result goes to
``DIR/<target>-<round>.json``. The raw per-round figures go to ``DIR/compare.json`` and the
markdown report to ``DIR/summary.md``, which is also printed. DIR defaults to
``results/compare-<timestamp>/`` (next to ``make bench``'s results, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from run import HARNESS, ROOT, ensure_setup, gateway_cmd, harness_options, peak_rss_mb, run_floor, run_gateway

BUILDS = ("before", "after")
TARGETS = ("floor", *BUILDS)


def build_order(round_no: int) -> tuple[str, str]:
    """Odd rounds run before→after, even rounds after→before, so neither build always goes first."""
    return BUILDS if round_no % 2 == 1 else BUILDS[::-1]


def check_checkout(path: Path) -> str | None:
    """What is missing for this checkout to be measured, if anything."""
    for needed in (path / ".venv" / "bin" / "llm-proxy", path / "bench" / "config.yaml"):
        if not needed.exists():
            return f"{needed} not found"
    return None


def figures(result_path: Path) -> dict:
    """The per-round numbers kept from one harness result: its medians over repeats per scenario."""
    run = json.loads(result_path.read_text())
    return {
        "file": str(result_path),
        "peak_rss_mb": round(peak_rss_mb(run), 1),
        "scenarios": {name: {"rps": s["rps"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                             "errors": s.get("errors", 0), "steal_pct": s.get("steal_pct", 0)}
                      for name, s in run["summary"].items() if not name.startswith("ttft")},
    }


def metrics(scenarios: list[str]) -> list[tuple[str, str, str]]:
    """(label, scenario, key) rows of the table: p50 for c=1 (latency), RPS otherwise (throughput)."""
    rows = []
    for scenario in scenarios:
        if scenario.endswith("_c1"):
            rows.append((f"{scenario} p50 ms", scenario, "p50_ms"))
        else:
            rows.append((f"{scenario} RPS", scenario, "rps"))
    rows.append(("peak RSS MB", "", "peak_rss_mb"))
    return rows


def value(target: dict, scenario: str, key: str) -> float | None:
    if key == "peak_rss_mb":
        return target["peak_rss_mb"]
    s = target["scenarios"].get(scenario)
    return None if s is None else s[key]


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio_median(rounds: list[dict], num: str, den: str, scenario: str, key: str) -> float | None:
    """Median over rounds of num/den, each ratio taken within one round (side by side)."""
    ratios = []
    for r in rounds:
        a, b = value(r[num], scenario, key), value(r[den], scenario, key)
        if a is not None and b:
            ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def fmt(v: float | None, key: str) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if key == "p50_ms" else f"{v:.0f}"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def added_p50(rounds: list[dict], build: str, scenario: str) -> float | None:
    """Median over rounds of the build's p50 minus the floor's p50 in the same round."""
    diffs = []
    for r in rounds:
        x, f = value(r[build], scenario, "p50_ms"), value(r["floor"], scenario, "p50_ms")
        if x is not None and f is not None:
            diffs.append(x - f)
    return statistics.median(diffs) if diffs else None


def fmt_added(v: float | None) -> str:
    return "–" if v is None else f"{v:+.3f}"


def report(rounds: list[dict], scenarios: list[str]) -> str:
    """Medians over rounds, ratios within rounds, then every round's raw figures."""
    n = len(rounds)
    lines = [f"Medians over {n} round(s); ratios are per-round ratios' medians. For p50 and RSS lower is "
             "better (ratio < 1 = after is better); for RPS higher is better.", "",
             "| figure | floor | before | after | after / before | before / floor | after / floor |",
             "|---|---|---|---|---|---|---|"]
    for label, scenario, key in metrics(scenarios):
        meds = [median_of([value(r[t], scenario, key) for r in rounds]) for t in TARGETS]
        lines.append(f"| {label} | {' | '.join(fmt(m, key) for m in meds)} | "
                     f"{fmt_ratio(ratio_median(rounds, 'after', 'before', scenario, key))} | "
                     f"{fmt_ratio(ratio_median(rounds, 'before', 'floor', scenario, key))} | "
                     f"{fmt_ratio(ratio_median(rounds, 'after', 'floor', scenario, key))} |")
    for scenario in [s for s in scenarios if s.endswith("_c1")]:  # make bench's floor-relative latency figure
        added = [fmt_added(added_p50(rounds, b, scenario)) for b in BUILDS]
        lines.append(f"| {scenario} added p50 ms vs floor | 0 | {added[0]} | {added[1]} | | | |")
    lines += ["", "| round | order | target | " + " | ".join(label for label, _, _ in metrics(scenarios))
              + " | errors |", "|---|---|---|" + "---|" * (len(metrics(scenarios)) + 1)]
    for r in rounds:
        for t in TARGETS:
            errors = sum(s["errors"] for s in r[t]["scenarios"].values())
            cells = " | ".join(fmt(value(r[t], sc, key), key) for _, sc, key in metrics(scenarios))
            lines.append(f"| {r['round']} | {'→'.join(r['order'])} | {t} | {cells} | {errors} |")
    errors = sum(s["errors"] for r in rounds for t in TARGETS for s in r[t]["scenarios"].values())
    if errors:
        lines += ["", f"**{errors} request errors** in the runs above: check the harness logs before "
                  "trusting these figures."]
    return "\n".join(lines)


def scenario_names(spec: str) -> list[str]:
    """'ns:1,ns:32' -> ['ns_c1', 'ns_c32'], the harness's summary keys."""
    names = []
    for item in spec.split(","):
        kind, conns = item.strip().split(":")
        names.append(f"{kind}_c{int(conns)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old build (with .venv)")
    parser.add_argument("--after", type=Path, required=True, help="checkout of the new build (with .venv)")
    parser.add_argument("--scenarios", default="ns:1,ns:32,st:32")
    parser.add_argument("--rounds", type=int, default=3, help="floor/before/after alternations")
    parser.add_argument("--repeats", default="3", help="harness repeats per target per round")
    parser.add_argument("--duration", default="10", help="seconds per wrk run")
    parser.add_argument("--results", type=Path, help="output dir (default results/compare-<timestamp>)")
    args = parser.parse_args()
    if not (HARNESS / "bench.py").exists():
        print(f"benchmark harness not found at {HARNESS} (set LLM_PROXY_BENCH_HARNESS)", file=sys.stderr)
        return 2
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, path in checkouts.items():
        if problem := check_checkout(path):
            print(f"--{name}: {problem}", file=sys.stderr)
            return 2
    scenarios = scenario_names(args.scenarios)
    ensure_setup()
    results = (args.results or ROOT / "results" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    results.mkdir(parents=True, exist_ok=True)
    common = harness_options(args.scenarios, args.repeats, args.duration)
    raw = {"before": str(checkouts["before"]), "after": str(checkouts["after"]), "scenarios": args.scenarios,
           "repeats": args.repeats, "duration_s": args.duration, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="llm-proxy-compare-") as tmp:
        for i in range(1, args.rounds + 1):
            order = build_order(i)
            entry: dict = {"round": i, "order": list(order)}
            entry["floor"] = figures(run_floor(f"floor-{i}", results / f"floor-{i}.json", common))
            for build in order:
                cmd = gateway_cmd(checkouts[build], f"{tmp}/{build}-{i}.db")
                entry[build] = figures(run_gateway(f"{build}-{i}", results / f"{build}-{i}.json", common, cmd))
            raw["rounds"].append(entry)
            (results / "compare.json").write_text(json.dumps(raw, indent=1) + "\n")  # kept if a later round fails
    text = report(raw["rounds"], scenarios)
    (results / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\nresults in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
