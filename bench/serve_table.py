"""Markdown tables of bench/serve.sh results: one row per (concurrency, setup), then the
disaggregated / aggregated ratios measured in the same run."""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
setups = [("disaggregated", "disaggregated 2P+2D"), ("aggregated2", "aggregated 2D"),
          ("aggregated1", "aggregated 1D")]
runs = {}
for key, _ in setups:
    path = out / f"{key}.jsonl"
    runs[key] = {r["max_concurrency"]: r for r in map(json.loads, path.read_text().splitlines())}

print("| concurrency | setup | mean TTFT ms | p99 TTFT ms | mean ITL ms (per chunk) | mean TPOT ms | output tok/s | failed |")
print("|---|---|---|---|---|---|---|---|")
for c in sorted(runs["disaggregated"]):
    for key, label in setups:
        r = runs[key].get(c)
        if r:
            print(f"| {c} | {label} | {r['mean_ttft_ms']:.0f} | {r['p99_ttft_ms']:.0f} | "
                  f"{r['mean_itl_ms']:.0f} | {r['mean_tpot_ms']:.1f} | {r['output_throughput']:.1f} | {r['failed']} |")
print()
print("Ratio disaggregated / aggregated 2D (below 1 is better for TTFT and TPOT, above 1 for tok/s):")
print()
print("| concurrency | mean TTFT | mean TPOT | output tok/s |")
print("|---|---|---|---|")
for c in sorted(runs["disaggregated"]):
    d, a = runs["disaggregated"][c], runs["aggregated2"].get(c)
    if a:
        print(f"| {c} | {d['mean_ttft_ms'] / a['mean_ttft_ms']:.2f} | "
              f"{d['mean_tpot_ms'] / a['mean_tpot_ms']:.2f} | "
              f"{d['output_throughput'] / a['output_throughput']:.2f} |")
