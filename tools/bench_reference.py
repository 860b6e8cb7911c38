#!/usr/bin/env python3
"""Reference generation speed of Hugging Face transformers, for BENCHMARKS.md.

Measures greedy generation of exactly --new-tokens tokens (min_new_tokens =
max_new_tokens) after a --prompt-len token prompt, for each batch size in --batch,
on CPU with torch.set_num_threads(t) for each t in --threads (default 2).

    tokens/s = batch * new_tokens / wall time of model.generate (prefill included)

With several thread counts (e.g. --threads 1,2) every batch size is measured with each
and the fastest is reported (all are kept in the JSON): on a 2-core machine shared with
other work, torch's 2-thread pool stalls whenever one core is taken (its workers wait for
each other at every op), which can make it several times slower than 1 thread; the
comparison should be against the reference's best.

Model:
    --model DIR       a checkpoint in HF layout (config.json + *.safetensors), e.g. the
                      `bench` preset written by the Rust side
    --random-bench    build that same preset in Python with random weights:
                      Qwen3-MoE, hidden 512, 8 layers, 32 experts top-4,
                      moe_intermediate_size 256, 8 query / 4 KV heads of dim 64, vocab 32000

Examples:
    python tools/bench_reference.py --random-bench
    python tools/bench_reference.py --model /path/to/bench --batch 1,16 --json out.json

Requirements: see tools/golden/requirements.txt (torch 2.15.0, transformers 5.24.0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import transformers


def bench_config():
    """The `bench` preset (keep in sync with the Rust preset)."""
    return transformers.Qwen3MoeConfig(
        vocab_size=32000,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        num_experts=32,
        num_experts_per_tok=4,
        moe_intermediate_size=256,
        intermediate_size=1536,  # unused: every layer is MoE (mlp_only_layers=[], decoder_sparse_step=1)
        mlp_only_layers=[],
        decoder_sparse_step=1,
        norm_topk_prob=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def load_model(args, dtype):
    kw = dict(dtype=dtype, attn_implementation=args.attn)
    if args.experts:
        kw["experts_implementation"] = args.experts
    if args.model:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, **kw)
        source = os.path.abspath(args.model)
    else:
        torch.manual_seed(args.seed)
        model = transformers.Qwen3MoeForCausalLM._from_config(bench_config(), **kw)
        source = "random-bench"
    model.eval()
    return model, source


@torch.no_grad()
def run_one(model, batch, prompt_len, new_tokens, vocab, seed, measure_prefill=False):
    g = torch.Generator().manual_seed(seed + batch)
    ids = torch.randint(1, vocab, (batch, prompt_len), generator=g)
    mask = torch.ones_like(ids)
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
        use_cache=True,
    )
    wall = time.perf_counter() - t0
    generated = out.shape[1] - prompt_len
    if generated != new_tokens:
        raise RuntimeError(f"generated {generated} tokens, expected {new_tokens}")
    prefill = None
    if measure_prefill:
        # prefill alone (separate forward, for information: decode-only rate estimate)
        t1 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, use_cache=True)
        prefill = time.perf_counter() - t1
    return wall, prefill


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint directory in HF layout")
    src.add_argument("--random-bench", action="store_true", help="random-weight `bench` preset (default if no --model)")
    ap.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--threads",
        default="2",
        help="comma-separated torch.set_num_threads values; the fastest is reported (default 2)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attn_implementation (default sdpa)")
    ap.add_argument(
        "--experts",
        default=None,
        help="experts_implementation (transformers default: grouped_mm; alternatives eager, batched_mm)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per batch size; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed short generate calls before measuring")
    ap.add_argument(
        "--measure-prefill",
        action="store_true",
        help="also time a separate prefill forward per run and estimate the decode-only rate",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    thread_counts = [int(t) for t in args.threads.split(",") if t]
    torch.set_num_threads(thread_counts[0])
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    batches = [int(b) for b in args.batch.split(",") if b]

    t_load = time.perf_counter()
    model, source = load_model(args, dtype)
    load_s = time.perf_counter() - t_load
    vocab = model.config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {source}: {n_params / 1e6:.1f}M params, {args.dtype}, attn={model.config._attn_implementation}, "
        f"experts={getattr(model.config, '_experts_implementation', None)}, threads={args.threads}, "
        f"load {load_s:.1f}s",
        flush=True,
    )

    for _ in range(args.warmup):
        run_one(model, 1, 16, 4, vocab, args.seed + 1000)

    results = []
    for b in batches:
        best = None
        by_threads = {}
        for threads in thread_counts:
            torch.set_num_threads(threads)
            walls, prefills = [], []
            for r in range(args.repeats):
                wall, prefill = run_one(
                    model, b, args.prompt_len, args.new_tokens, vocab, args.seed + r, args.measure_prefill
                )
                walls.append(wall)
                prefills.append(prefill)
            wall = statistics.median(walls)
            tps = b * args.new_tokens / wall
            by_threads[str(threads)] = round(tps, 2)
            row = {
                "batch": b,
                "threads": threads,
                "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens,
                "wall_s": round(wall, 4),
                "tokens_per_s": round(tps, 2),
                "all_wall_s": [round(w, 4) for w in walls],
            }
            extra = ""
            if args.measure_prefill:
                prefill = statistics.median(prefills)
                row["prefill_s"] = round(prefill, 4)
                decode_s = wall - prefill
                # meaningless when the separately timed prefill is not shorter than the whole run (noisy machine)
                row["decode_only_tokens_per_s_estimate"] = (
                    round(b * (args.new_tokens - 1) / decode_s, 2) if decode_s > 0 else None
                )
                extra = f" (prefill {prefill:.2f}s, decode-only ~{row['decode_only_tokens_per_s_estimate']} tok/s)"
            print(
                f"batch {b:3d}, {threads} threads: {b * args.new_tokens} tokens in {wall:.2f}s -> {tps:.1f} tok/s{extra}",
                flush=True,
            )
            if best is None or tps > best["tokens_per_s"]:
                best = row
        best["tokens_per_s_by_threads"] = by_threads
        results.append(best)
        if len(thread_counts) > 1:
            print(f"batch {b:3d}: best {best['tokens_per_s']} tok/s with {best['threads']} threads", flush=True)

    report = {
        "engine": "transformers",
        "model": source,
        "config": {
            k: getattr(model.config, k, None)
            for k in (
                "model_type",
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
            )
        },
        "params": n_params,
        "dtype": args.dtype,
        "attn_implementation": model.config._attn_implementation,
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "threads": thread_counts,
        "greedy": True,
        "metric": "tokens_per_s = batch * new_tokens / wall time of generate() including prefill",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
