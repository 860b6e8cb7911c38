#!/usr/bin/env python3
"""Bytes moved per token per MoE layer, from the EpStats JSON lines of `moeflow group --stats`.

Usage: python3 bench/ep_bytes.py OUTPUT_OF_GROUP [--hidden 512] [--elem-bytes 4]

Every line of the output that is a JSON object with "layers" is one rank's EpStats; other lines
(the per-prompt results) are ignored. Wire format (worker/src/group/wire.rs): a dispatch
message from rank r to rank q is `8 + 2 n + 8 p + n * row` bytes (n tokens, p (expert, weight)
pairs, row = hidden * elem bytes); the combine message back is `n * row`. `bytes_sent[q]` of a
rank counts both its dispatches to q and its combines to q, and includes its own rank's entry,
which never crosses a wire, so it is excluded here.

Summed over all ranks of one layer, with S = cross-rank bytes sent, P = remote selections,
X = token rows sent to another rank (one per token and destination rank), M = non-empty
cross-rank dispatch messages:
    S = 8 M + X (2 row + 2) + 8 P
which has one solution with 0 <= 8 M < 2 row + 2, so X and M follow exactly from S and P.
The analytic value of the issue is row * P per token (every remote selection sends the row).
"""

import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--elem-bytes", type=int, default=4)
    a = ap.parse_args()
    row = a.hidden * a.elem_bytes

    ranks = []
    with open(a.output) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(v, dict) and "layers" in v:
                ranks.append(v)
    if not ranks:
        print("no EpStats lines found", file=sys.stderr)
        return 1
    ranks.sort(key=lambda s: s["rank"])
    world = ranks[0]["world_size"]
    layers = sorted({int(k) for s in ranks for k in s["layers"]})

    print(f"{len(ranks)} ranks, world size {world}, hidden {a.hidden}, {a.elem_bytes} bytes/elem, "
          f"row {row} bytes")
    print()
    hdr = ("| layer | tokens | remote sel./token | analytic row x remote sel. (B/token) "
           "| measured dispatch (B/token) | measured combine (B/token) | dispatch / analytic "
           "| rows sent to other ranks / token | header B/token | distinct dest. ranks / token "
           "(incl. own) | tokens per rank |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    tot = dict(tokens=0, P=0, S=0, X=0, M=0, dest=0, analytic=0, disp=0, comb=0)
    for layer in layers:
        ls = [s["layers"][str(layer)] for s in ranks]
        S = sum(b for r, l in enumerate(ls) for q, b in enumerate(l["bytes_sent"]) if q != r)
        R = sum(b for r, l in enumerate(ls) for q, b in enumerate(l["bytes_received"]) if q != r)
        assert S == R, f"layer {layer}: cross-rank bytes sent {S} != received {R}"
        P = sum(l["remote_selections"] for l in ls)
        tokens_by_rank = [sum(l["dest_histogram"]) for l in ls]
        T = sum(tokens_by_rank)
        dest = sum(d * n for l in ls for d, n in enumerate(l["dest_histogram"]))
        rest = S - 8 * P
        X, r8 = divmod(rest, 2 * row + 2)
        assert r8 % 8 == 0, f"layer {layer}: {r8} header bytes left, not a multiple of 8"
        M = r8 // 8
        comb = X * row
        disp = S - comb
        analytic = row * P
        print(f"| {layer} | {T} | {P / T:.3f} | {analytic / T:.0f} | {disp / T:.0f} | "
              f"{comb / T:.0f} | {disp / analytic:.3f} | {X / T:.3f} | "
              f"{(disp - X * row) / T:.1f} | {dest / T:.3f} | {tokens_by_rank} |")
        for k, v in dict(tokens=T, P=P, S=S, X=X, M=M, dest=dest, analytic=analytic, disp=disp,
                         comb=comb).items():
            tot[k] += v
    T = tot["tokens"]
    print(f"| mean | {T // len(layers)} | {tot['P'] / T:.3f} | {tot['analytic'] / T:.0f} | "
          f"{tot['disp'] / T:.0f} | {tot['comb'] / T:.0f} | {tot['disp'] / tot['analytic']:.3f} | "
          f"{tot['X'] / T:.3f} | {(tot['disp'] - tot['X'] * row) / T:.1f} | "
          f"{tot['dest'] / T:.3f} | |")
    print()
    print(f"over all {len(layers)} MoE layers: dispatch + combine = {tot['S'] / T:.0f} B per token "
          f"per layer crossing ranks; {tot['M']} non-empty cross-rank dispatch messages "
          f"({tot['M'] / len(layers):.1f} per layer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
