"""The numbers in docs/performance.md: `rto bench` on the tiny default model and on the ~15M-parameter
("medium") model, one fresh process per size, results as JSON under benchmarks/results/.

    python benchmarks/bench_ppo_vs_rto.py                       # tiny and medium, 5 measured iterations
    python benchmarks/bench_ppo_vs_rto.py --sizes tiny --iterations 3
    python benchmarks/bench_ppo_vs_rto.py --compare trl          # needs trl <= 1.12 importable (see compare_trl.sh)

Each run prints rto bench's table; this script then prints the ratios of every size side by side. The
machine's load average before and after each run is recorded in the JSON: timings taken while other
jobs share the CPU are noisy, and the median over iterations (the default statistic) only helps so much.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_size(size: str, args: argparse.Namespace) -> dict:
    suffix = "" if args.threads == 2 else f"_t{args.threads}"
    out = Path(args.out_dir) / f"bench_{size}{suffix}.json"
    cmd = [
        sys.executable, "-m", "rto.bench", "--model-size", size, "--iterations", str(args.iterations),
        "--warmup-iterations", str(args.warmup), "--threads", str(args.threads), "--json-out", str(out),
        "--compare", args.compare,
    ]  # fmt: skip
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", nargs="+", default=["tiny", "medium"], choices=["micro", "tiny", "small", "medium"]
    )
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", default="none", choices=["none", "trl"])
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    results = {size: run_size(size, args) for size in args.sizes}
    print()
    print(
        f"{'size':<8}{'params':>9}{'RTO/PPO':>9}{'PPO/floor':>11}{'RTO/floor':>11}{'PPO s':>8}{'RTO s':>8}  load"
    )
    for size, r in results.items():
        ra, m = r["ratios"], r["modes"]
        print(
            f"{size:<8}{r['model']['params'] / 1e6:>8.2f}M{ra['rto_over_ppo']:>9.3f}{ra['ppo_iteration_over_floor']:>11.3f}"
            f"{ra['rto_iteration_over_floor']:>11.3f}{m['ppo']['iteration_s']:>8.2f}{m['rto']['iteration_s']:>8.2f}"
            f"  {r['machine']['load_avg_start']} -> {r['machine']['load_avg_end']}"
        )
        rc = r["ratios_cpu"]
        print(
            f"{'':<17}{rc['rto_over_ppo']:>9.3f}{rc['ppo_iteration_over_floor']:>11.3f}"
            f"{rc['rto_iteration_over_floor']:>11.3f}  (the same in process CPU time)"
        )
        trl = r.get("compare", {}).get("trl")
        if trl and "rto_ppo_over_trl" in trl:
            print(f"{'':<8}trl {trl['trl_version']} PPO {trl['trl_iteration_s']:.2f} s; rto ppo / trl = "
                  f"{trl['rto_ppo_over_trl']:.3f}")  # fmt: skip
        for t in r["targets"]:
            if not t["met"]:
                print(
                    f"{'':<8}target not met: {t['name']} = {t['value']:.3f} > {t['limit']} (+{t['over_by_pct']:.1f}%)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
