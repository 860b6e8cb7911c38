#!/usr/bin/env python3
"""Writes placement plans for a model from an SGLang expert-count JSON, folded onto the model
exactly as `--route-replay` folds it (worker/src/moe/replay.rs): source MoE rows are the rows
with any count; model MoE layer i of M takes source row i*S//M; model expert e of E takes the
summed counts of source experts e*Es//E .. (e+1)*Es//E.

  bench/placement_plans.py MODEL_DIR COUNTS.json RANKS OUT_DIR

Writes OUT_DIR/contiguous.json, OUT_DIR/lpt.json (longest-processing-time balance, one copy of
each expert, ceil(E/N) slots: the rebalancer's interim planner) and OUT_DIR/lpt-replicated.json
(one extra slot per rank, filled with replicas of the hottest experts, which split their load).
Until the planners land these stand in for eplb / prefill-aware / traffic-aware; put their plans
in OUT_DIR too and bench/placement_e2e.sh measures every *.json there.
"""
import json, math, os, sys

model, counts_path, ranks, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cfg = json.load(open(os.path.join(model, "config.json")))
E = cfg["num_experts"]
L = cfg["num_hidden_layers"]
step = cfg.get("decoder_sparse_step", 1)
only = set(cfg.get("mlp_only_layers", []))
moe = [l for l in range(L) if l not in only and E > 0 and (l + 1) % step == 0]
rows = [r for r in json.load(open(counts_path))["logical_count"] if any(v > 0 for v in r)]
Es = len(rows[0])
loads = {}
for i, l in enumerate(moe):
    src = rows[i * len(rows) // len(moe)]
    loads[l] = [sum(src[e * Es // E:(e + 1) * Es // E]) for e in range(E)]

def plan(name, layers):
    return {"format": "moeflow.placement/v1", "num_ranks": ranks, "num_experts": E,
            "layers": {str(l): v for l, v in layers.items()}, "algorithm": name,
            "source": os.path.basename(counts_path)}

def lpt(load, slots, replicas=0):
    # Replicas: the hottest experts get a second copy, each copy carrying half the load.
    order = sorted(range(E), key=lambda e: (-load[e], e))
    hot = set(order[:replicas])
    items = [(load[e] / (2 if e in hot else 1), e) for e in range(E)]
    items += [(load[e] / 2, e) for e in hot]
    items.sort(key=lambda x: (-x[0], x[1]))
    lists, rl = [[] for _ in range(ranks)], [0.0] * ranks
    for w, e in items:
        r = min((r for r in range(ranks) if len(lists[r]) < slots and e not in lists[r]),
                key=lambda r: (rl[r], len(lists[r]), r))
        lists[r].append(e); rl[r] += w
    return [sorted(x) for x in lists]

base = E // ranks
contig = [list(range(r * base, (r + 1) * base)) for r in range(ranks)]
os.makedirs(out, exist_ok=True)
plans = {
    "contiguous": {l: contig for l in moe},
    "lpt": {l: lpt(loads[l], math.ceil(E / ranks)) for l in moe},
    "lpt-replicated": {l: lpt(loads[l], math.ceil(E / ranks) + 1, replicas=ranks) for l in moe},
}
for name, layers in plans.items():
    json.dump(plan(name, layers), open(os.path.join(out, name + ".json"), "w"), indent=1)
    # Modelled cost: per layer the busiest rank's load (replicas split evenly), summed.
    cost = 0.0
    for l, lists in layers.items():
        copies = [sum(e in x for x in lists) for e in range(E)]
        cost += max(sum(loads[l][e] / copies[e] for e in x) for x in lists)
    print(f"{name}: modelled busiest-rank load {cost:.0f}")
