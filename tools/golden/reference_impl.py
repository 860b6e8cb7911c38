#!/usr/bin/env python3
"""Independent, transformers-free re-implementation of the three golden architectures
in plain torch, written from tools/golden/FINDINGS.md.  It reads config.json +
model.safetensors directly (both expert layouts, both rope config schemes), runs the
whole sequence prompt_ids + decode_ids without a KV cache, and compares with
golden.safetensors.  If this passes, FINDINGS.md describes the reference exactly
enough to port it.

    python tools/golden/reference_impl.py            # all dirs under worker/tests/golden
    python tools/golden/reference_impl.py llama4     # one
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "worker" / "tests" / "golden"
F32 = torch.float32


# ----------------------------------------------------------------------------- config


def rope_params(cfg: dict) -> dict:
    """Accept transformers-5 `rope_parameters` or legacy top-level `rope_theta` + `rope_scaling`."""
    if cfg.get("rope_parameters"):
        rp = dict(cfg["rope_parameters"])
    else:
        rp = dict(cfg.get("rope_scaling") or {})
        rp["rope_theta"] = cfg.get("rope_theta", 10000.0)
    rp["rope_type"] = rp.get("rope_type", rp.get("type", "default"))
    return rp


def num_experts(cfg: dict) -> int:
    for k in ("num_experts", "num_local_experts", "n_routed_experts"):
        if cfg.get(k) is not None:
            return cfg[k]
    raise KeyError("num experts")


# ----------------------------------------------------------------------------- weights


def expert_weights(w: dict, prefix: str, E: int, fused_in_first: bool):
    """Returns gate [E, F, H], up [E, F, H], down [E, H, F] (nn.Linear orientation)."""
    if f"{prefix}.experts.0.gate_proj.weight" in w:
        gate = torch.stack([w[f"{prefix}.experts.{e}.gate_proj.weight"] for e in range(E)])
        up = torch.stack([w[f"{prefix}.experts.{e}.up_proj.weight"] for e in range(E)])
        down = torch.stack([w[f"{prefix}.experts.{e}.down_proj.weight"] for e in range(E)])
        return gate, up, down
    gu = w[f"{prefix}.experts.gate_up_proj"]
    dn = w[f"{prefix}.experts.down_proj"]
    if fused_in_first:  # llama4: gate_up [E, H, 2F], down [E, F, H]
        F = gu.shape[2] // 2
        return gu[:, :, :F].transpose(1, 2), gu[:, :, F:].transpose(1, 2), dn.transpose(1, 2)
    # qwen3_moe / deepseek_v3 (transformers fused): gate_up [E, 2F, H], down [E, H, F]
    F = gu.shape[1] // 2
    return gu[:, :F, :], gu[:, F:, :], dn


# ----------------------------------------------------------------------------- ops


def rms(x, w=None, eps=1e-6):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w


def lin(x, w):
    return x @ w.T


def swiglu(x, g, u, d):
    return lin(torch.nn.functional.silu(lin(x, g)) * lin(x, u), d)


def rope_half(x, cos, sin):
    """rotate_half convention: pairs (x[i], x[i + d/2]). x [T, heads, d]; cos/sin [T, d/2]."""
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2], x[..., d2:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def rope_interleaved(x, cos, sin):
    """interleaved convention: pairs (x[2i], x[2i+1]), rotated in place."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x2 * c + x1 * s
    return out


def inv_freq_and_attn_factor(rp: dict, dim: int, max_pos: int):
    base = rp["rope_theta"]
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=F32) / dim))
    t = rp["rope_type"]
    if t == "default":
        return inv, 1.0
    if t == "llama3":
        factor, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp[
            "original_max_position_embeddings"
        ]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = (wl >= hi_wl) & (wl <= lo_wl)
        return torch.where(medium, smoothed, out), 1.0
    if t == "yarn":
        factor = rp["factor"]
        omax = rp["original_max_position_embeddings"]
        ms, msa = rp.get("mscale"), rp.get("mscale_all_dim")

        def gm(s, m=1.0):
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        attn = rp.get("attention_factor")
        if attn is None:
            attn = gm(factor, ms) / gm(factor, msa) if (ms and msa) else gm(factor)
        bf, bs = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1

        def corr_dim(nrot):
            return (dim * math.log(omax / (nrot * 2 * math.pi))) / (2 * math.log(base))

        low, high = corr_dim(bf), corr_dim(bs)
        if rp.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=F32) - low) / (high - low)).clamp(0, 1)
        extra = 1 - ramp  # 1 -> keep original frequency, 0 -> divide by factor
        inv = (inv / factor) * (1 - extra) + inv * extra
        return inv, attn
    raise NotImplementedError(t)


def cos_sin(inv, T, attn_factor=1.0):
    pos = torch.arange(T, dtype=F32)
    f = pos[:, None] * inv[None, :]
    return f.cos() * attn_factor, f.sin() * attn_factor


def attend(q, k, v, scale, mask):
    """q [T, nh, d], k [T, nkv, d], v [T, nkv, dv]; GQA: q head h uses kv head h // (nh // nkv)."""
    nh, nkv = q.shape[1], k.shape[1]
    rep = nh // nkv
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    s = s.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hqk,khd->qhd", p, v).reshape(q.shape[0], -1)


def causal(T):
    i = torch.arange(T)
    return i[None, :] <= i[:, None]


# ----------------------------------------------------------------------------- models


def qwen3_moe(cfg, w, ids):
    T, H = len(ids), cfg["hidden_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, E, k = cfg["rms_norm_eps"], num_experts(cfg), cfg["num_experts_per_tok"]
    inv, af = inv_freq_and_attn_factor(rope_params(cfg), hd, cfg["max_position_embeddings"])
    cos, sin = cos_sin(inv, T, af)
    x = w["model.embed_tokens.weight"][ids]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}"
        h = rms(x, w[f"{p}.input_layernorm.weight"], eps)
        q = lin(h, w[f"{p}.self_attn.q_proj.weight"]).view(T, nh, hd)
        kk = lin(h, w[f"{p}.self_attn.k_proj.weight"]).view(T, nkv, hd)
        v = lin(h, w[f"{p}.self_attn.v_proj.weight"]).view(T, nkv, hd)
        q = rms(q, w[f"{p}.self_attn.q_norm.weight"], eps)  # per-head RMSNorm BEFORE rope
        kk = rms(kk, w[f"{p}.self_attn.k_norm.weight"], eps)
        q, kk = rope_half(q, cos, sin), rope_half(kk, cos, sin)
        x = x + lin(attend(q, kk, v, hd**-0.5, causal(T)), w[f"{p}.self_attn.o_proj.weight"])
        h = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        sparse = L not in (cfg.get("mlp_only_layers") or []) and (L + 1) % cfg["decoder_sparse_step"] == 0
        if sparse and E > 0:
            probs = torch.softmax(lin(h, w[f"{p}.mlp.gate.weight"]), -1)
            top, idx = probs.topk(k, -1)
            if cfg["norm_topk_prob"]:
                top = top / top.sum(-1, keepdim=True)
            g, u, d = expert_weights(w, f"{p}.mlp", E, False)
            out = torch.zeros_like(h)
            for t in range(T):
                for j in range(k):
                    e = int(idx[t, j])
                    out[t] += top[t, j] * swiglu(h[t : t + 1], g[e], u[e], d[e])[0]
        else:
            out = swiglu(h, w[f"{p}.mlp.gate_proj.weight"], w[f"{p}.mlp.up_proj.weight"], w[f"{p}.mlp.down_proj.weight"])
        x = x + out
    return lin(rms(x, w["model.norm.weight"], eps), w["lm_head.weight"])


def deepseek_v3(cfg, w, ids):
    T = len(ids)
    nh, eps = cfg["num_attention_heads"], cfg["rms_norm_eps"]
    nope, rope_d, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    kvr = cfg["kv_lora_rank"]
    E, k = num_experts(cfg), cfg["num_experts_per_tok"]
    rp = rope_params(cfg)
    inv, af = inv_freq_and_attn_factor(rp, rope_d, cfg["max_position_embeddings"])
    cos, sin = cos_sin(inv, T, af)
    rot = rope_interleaved if cfg.get("rope_interleave", True) else rope_half
    scale = (nope + rope_d) ** -0.5
    if rp["rope_type"] != "default" and rp.get("mscale_all_dim"):
        m = 0.1 * rp["mscale_all_dim"] * math.log(rp["factor"]) + 1.0 if rp["factor"] > 1 else 1.0
        scale = scale * m * m
    x = w["model.embed_tokens.weight"][ids]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}"
        a = f"{p}.self_attn"
        h = rms(x, w[f"{p}.input_layernorm.weight"], eps)
        if cfg.get("q_lora_rank") is None:
            q = lin(h, w[f"{a}.q_proj.weight"])
        else:
            q = lin(rms(lin(h, w[f"{a}.q_a_proj.weight"]), w[f"{a}.q_a_layernorm.weight"], 1e-6), w[f"{a}.q_b_proj.weight"])
        q = q.view(T, nh, nope + rope_d)
        q_nope, q_rot = q[..., :nope], q[..., nope:]
        ckv = lin(h, w[f"{a}.kv_a_proj_with_mqa.weight"])
        lat, k_rot = ckv[:, :kvr], ckv[:, kvr:]
        lat = rms(lat, w[f"{a}.kv_a_layernorm.weight"], 1e-6)
        kv = lin(lat, w[f"{a}.kv_b_proj.weight"]).view(T, nh, nope + vd)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        q_rot = rot(q_rot, cos, sin)
        k_rot = rot(k_rot.view(T, 1, rope_d), cos, sin).expand(T, nh, rope_d)
        qq = torch.cat([q_nope, q_rot], -1)
        kk = torch.cat([k_nope, k_rot], -1)
        x = x + lin(attend(qq, kk, v, scale, causal(T)), w[f"{a}.o_proj.weight"])
        h = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        if L >= cfg["first_k_dense_replace"]:
            logits = lin(h, w[f"{p}.mlp.gate.weight"])
            s = logits.sigmoid()
            sfc = s + w[f"{p}.mlp.gate.e_score_correction_bias"]
            ng, tg = cfg["n_group"], cfg["topk_group"]
            gs = sfc.view(T, ng, E // ng).topk(2, -1).values.sum(-1)
            gsel = gs.topk(tg, -1).indices
            gmask = torch.zeros(T, ng, dtype=torch.bool).scatter_(1, gsel, True)
            emask = gmask[:, :, None].expand(T, ng, E // ng).reshape(T, E)
            idx = sfc.masked_fill(~emask, float("-inf")).topk(k, -1).indices
            wts = s.gather(1, idx)
            if cfg["norm_topk_prob"]:
                wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
            wts = wts * cfg["routed_scaling_factor"]
            g, u, d = expert_weights(w, f"{p}.mlp", E, False)
            out = torch.zeros_like(h)
            for t in range(T):
                for j in range(k):
                    e = int(idx[t, j])
                    out[t] += wts[t, j] * swiglu(h[t : t + 1], g[e], u[e], d[e])[0]
            se = f"{p}.mlp.shared_experts"
            out = out + swiglu(h, w[f"{se}.gate_proj.weight"], w[f"{se}.up_proj.weight"], w[f"{se}.down_proj.weight"])
        else:
            out = swiglu(h, w[f"{p}.mlp.gate_proj.weight"], w[f"{p}.mlp.up_proj.weight"], w[f"{p}.mlp.down_proj.weight"])
        x = x + out
    return lin(rms(x, w["model.norm.weight"], eps), w["lm_head.weight"])


def llama4(cfg, w, ids):
    T = len(ids)
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, E, k = cfg["rms_norm_eps"], num_experts(cfg), cfg["num_experts_per_tok"]
    inv, af = inv_freq_and_attn_factor(rope_params(cfg), hd, cfg["max_position_embeddings"])
    cos, sin = cos_sin(inv, T, af)
    C = cfg.get("attention_chunk_size")
    pos = torch.arange(T)
    chunked = causal(T) & ((pos[None, :] // C) == (pos[:, None] // C)) if C else causal(T)
    moe_layers = cfg["moe_layers"]
    x = w["model.embed_tokens.weight"][ids]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}"
        a = f"{p}.self_attn"
        use_rope = bool(cfg["no_rope_layers"][L])
        h = rms(x, w[f"{p}.input_layernorm.weight"], eps)
        q = lin(h, w[f"{a}.q_proj.weight"]).view(T, nh, hd)
        kk = lin(h, w[f"{a}.k_proj.weight"]).view(T, nkv, hd)
        v = lin(h, w[f"{a}.v_proj.weight"]).view(T, nkv, hd)
        if use_rope:
            q, kk = rope_interleaved(q, cos, sin), rope_interleaved(kk, cos, sin)
            if cfg["use_qk_norm"]:
                q, kk = rms(q, None, eps), rms(kk, None, eps)  # L2Norm: no weight, AFTER rope
            mask = chunked
        else:
            if cfg["attn_temperature_tuning"]:
                sc = torch.log1p(torch.floor((pos.float() + 1.0) / cfg["floor_scale"])) * cfg["attn_scale"] + 1.0
                q = q * sc[:, None, None]
            mask = causal(T)
        x = x + lin(attend(q, kk, v, hd**-0.5, mask), w[f"{a}.o_proj.weight"])
        h = rms(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        f = f"{p}.feed_forward"
        if L in moe_layers:
            logits = lin(h, w[f"{f}.router.weight"])
            top, idx = logits.topk(k, -1)
            sc = top.sigmoid()
            g, u, d = expert_weights(w, f, E, True)
            out = swiglu(h, w[f"{f}.shared_expert.gate_proj.weight"], w[f"{f}.shared_expert.up_proj.weight"],
                         w[f"{f}.shared_expert.down_proj.weight"])
            for t in range(T):
                for j in range(k):
                    e = int(idx[t, j])
                    out[t] += swiglu(sc[t, j] * h[t : t + 1], g[e], u[e], d[e])[0]  # score scales the INPUT
        else:
            out = swiglu(h, w[f"{f}.gate_proj.weight"], w[f"{f}.up_proj.weight"], w[f"{f}.down_proj.weight"])
        x = x + out
    return lin(rms(x, w["model.norm.weight"], eps), w["lm_head.weight"])


MODELS = {"qwen3_moe": qwen3_moe, "deepseek_v3": deepseek_v3, "llama4_text": llama4}


def check(d: Path) -> float:
    cfg = json.loads((d / "config.json").read_text())
    w = {k: v.to(F32) for k, v in load_file(str(d / "model.safetensors")).items()}
    g = load_file(str(d / "golden.safetensors"))
    ids = torch.cat([g["prompt_ids"], g["decode_ids"]]).long()
    with torch.no_grad():
        logits = MODELS[cfg["model_type"]](cfg, w, ids)
    ref = torch.cat([g["prefill_logits"], g["decode_logits"]])
    diff = (logits - ref).abs().max().item()
    am = bool((logits[31:].argmax(-1)[:16] == g["decode_ids"].long()).all())
    print(f"{d.name:24s} {cfg['model_type']:12s} max|logits - golden| = {diff:.2e}  greedy ids match: {am}")
    if diff > 1e-4 or not am:
        raise SystemExit(f"{d.name}: MISMATCH")
    return diff


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.name for p in GOLDEN.iterdir() if (p / "golden.safetensors").exists())
    for n in names:
        check(GOLDEN / n)
