#!/usr/bin/python3
"""The PyTorch peer of bench/serve_bench.cc: greedy decoding with a KV cache in plain torch eager,
the way a simple Python server without continuous batching would do it. Run with Debian's
/usr/bin/python3 (python3-torch). Set OPENBLAS_NUM_THREADS=1 and the malloc environment before
starting it (the bench does); --threads sets ATen's intra-op threads.

Model: LlamaForCausalLM as transformers computes it, functional: token embedding, RMSNorm, rotary
embeddings (rotate-half), grouped-query attention over a preallocated KV cache, SwiGLU MLP, untied
or tied output head. Weights come from DIR/model.safetensors (parsed by bench/train/torch_peer.py's
reader) and DIR/config.json.

--prompts FILE: JSON list of prompts (lists of token ids), all the same length. For each batch size
B in --batches, B prompts are decoded as one static batch (prefill all B, then one token per step
for every row, --new-tokens steps); batch size 1 decodes --single-requests prompts one after another.

Prints one JSON object on the last line of stdout: for each batch size, generated tokens/s, the
mean time to first token, and the first prompt's tokens (for the bench to check against its own).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from torch_peer import read_safetensors  # noqa: E402


def rms_norm(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Llama:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.c = c
        self.w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads", self.heads)
        self.head_dim = c.get("head_dim", c["hidden_size"] // self.heads)
        self.eps = c.get("rms_norm_eps", 1e-6)
        theta = c.get("rope_theta", c.get("rope_parameters", {}).get("rope_theta", 10000.0))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def new_cache(self, batch, capacity):
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        return [(torch.empty(shape), torch.empty(shape)) for _ in range(self.layers)]

    def forward(self, ids, cache, past):
        """ids [B, L]; appends L positions to the cache after `past`; logits of the last position."""
        b, length = ids.shape
        total = past + length
        pos = torch.arange(past, total).float()
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
        h = F.embedding(ids, self.w["model.embed_tokens.weight"])
        mask = None
        if length > 1:
            mask = torch.full((length, total), float("-inf")).triu(past + 1)
        group = self.heads // self.kv_heads
        for i in range(self.layers):
            p = f"model.layers.{i}."
            x = rms_norm(h, self.w[p + "input_layernorm.weight"], self.eps)
            q = F.linear(x, self.w[p + "self_attn.q_proj.weight"]).view(b, length, self.heads, self.head_dim)
            k = F.linear(x, self.w[p + "self_attn.k_proj.weight"]).view(b, length, self.kv_heads, self.head_dim)
            v = F.linear(x, self.w[p + "self_attn.v_proj.weight"]).view(b, length, self.kv_heads, self.head_dim)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            keys, values = cache[i]
            keys[:, :, past:total] = k.transpose(1, 2)
            values[:, :, past:total] = v.transpose(1, 2)
            kk = keys[:, :, :total].repeat_interleave(group, dim=1)
            vv = values[:, :, :total].repeat_interleave(group, dim=1)
            scores = torch.matmul(q.transpose(1, 2), kk.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(probs, vv).transpose(1, 2).reshape(b, length, self.heads * self.head_dim)
            h = h + F.linear(out, self.w[p + "self_attn.o_proj.weight"])
            x = rms_norm(h, self.w[p + "post_attention_layernorm.weight"], self.eps)
            gate = F.linear(x, self.w[p + "mlp.gate_proj.weight"])
            up = F.linear(x, self.w[p + "mlp.up_proj.weight"])
            h = h + F.linear(F.silu(gate) * up, self.w[p + "mlp.down_proj.weight"])
        h = rms_norm(h[:, -1:], self.w["model.norm.weight"], self.eps)
        return F.linear(h, self.head)[:, -1]


def decode_batch(model, prompts, new_tokens):
    """Greedy decoding of equal-length prompts as one static batch; returns tokens and TTFT (s)."""
    start = time.perf_counter()
    ids = torch.tensor(prompts, dtype=torch.long)
    b, length = ids.shape
    cache = model.new_cache(b, length + new_tokens)
    logits = model.forward(ids, cache, 0)
    out = [[] for _ in range(b)]
    ttft = None
    past = length
    for step in range(new_tokens):
        nxt = logits.argmax(-1)
        if ttft is None:
            ttft = time.perf_counter() - start
        for r in range(b):
            out[r].append(int(nxt[r]))
        if step + 1 == new_tokens:
            break
        logits = model.forward(nxt.view(b, 1), cache, past)
        past += 1
    return out, ttft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--single-requests", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.prompts) as f:
        prompts = json.load(f)
    model = Llama(a.model)
    result = {"torch": torch.__version__, "batches": {}}
    with torch.inference_mode():
        decode_batch(model, prompts[:1], 2)  # warm up
        for bs in [int(x) for x in a.batches.split(",")]:
            count = a.single_requests if bs == 1 else bs
            tokens = 0
            ttfts = []
            first = None
            start = time.perf_counter()
            for i in range(0, count, bs):
                out, ttft = decode_batch(model, prompts[i:i + bs], a.new_tokens)
                tokens += sum(len(o) for o in out)
                ttfts.append(ttft)
                if first is None:
                    first = out[0]
            seconds = time.perf_counter() - start
            result["batches"][str(bs)] = {
                "requests": count,
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "mean_ttft_ms": 1000 * sum(ttfts) / len(ttfts),
                "first_tokens": first,
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
