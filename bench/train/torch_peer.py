#!/usr/bin/python3
"""The PyTorch eager peer of bench/train_bench.cc: the same small Llama, the same rows, the same
optimizer, timed the same way. Run with Debian's /usr/bin/python3 (python3-torch 1.13, the libtorch
Cairn links). Set OPENBLAS_NUM_THREADS=1 and the malloc environment before starting it (the bench
does); --threads sets ATen's intra-op threads.

Model: LlamaForCausalLM as transformers computes it, in plain torch: token embedding, RMSNorm,
rotary embeddings (rotate-half, HF layout), multi-head attention with a causal mask that also stays
inside each packed document, SwiGLU MLP, tied (default) or untied output head, cross entropy over
shifted labels with ignore_index -100. Optimizer: torch.optim.AdamW, clip_grad_norm_.

Rows: --rows FILE holds int32 [n, 4, seq] (input_ids, labels, position_ids, segment ids, where a
segment id of 0 is padding and equal ids form one document); rows are used in order, cycling.
Without --rows, random tokens, one document per row.

--weights FILE loads initial weights from a safetensors file with Hugging Face names (parsed here,
no extra packages); the first step's loss is reported so the bench can compare it with its own.

Prints one JSON object on the last line of stdout.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.heads = a.heads
        self.kv_heads = a.kv_heads
        self.head_dim = a.hidden // a.heads
        self.q_proj = nn.Linear(a.hidden, a.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(a.hidden, a.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(a.hidden, a.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(a.heads * self.head_dim, a.hidden, bias=False)

    def forward(self, x, cos, sin, blocked):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, -1)
        return self.o_proj(out)


class Mlp(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.gate_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.up_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.down_proj = nn.Linear(a.intermediate, a.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.self_attn = Attention(a)
        self.mlp = Mlp(a)
        self.input_layernorm = RMSNorm(a.hidden, a.eps)
        self.post_attention_layernorm = RMSNorm(a.hidden, a.eps)

    def forward(self, x, cos, sin, blocked):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, blocked)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList([Layer(a) for _ in range(a.layers)])
        self.norm = RMSNorm(a.hidden, a.eps)


class Llama(nn.Module):
    """Parameter names are those of a Hugging Face checkpoint (model.layers.0.self_attn.q_proj.weight)."""

    def __init__(self, a):
        super().__init__()
        self.a = a
        self.model = Backbone(a)
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        if a.tie:
            self.lm_head.weight = self.model.embed_tokens.weight
        head_dim = a.hidden // a.heads
        inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, input_ids, position_ids, segments, labels):
        x = self.model.embed_tokens(input_ids)
        freqs = position_ids.float()[..., None] * self.inv_freq  # [b, s, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos()[:, None, :, :].to(x.dtype)
        sin = emb.sin()[:, None, :, :].to(x.dtype)
        s = input_ids.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        same_doc = segments[:, :, None] == segments[:, None, :]
        allowed = causal[None] & same_doc
        # Padding (segment 0) attends to itself only, so no row of the softmax is empty.
        allowed = allowed | torch.eye(s, dtype=torch.bool)[None]
        blocked = ~allowed[:, None, :, :]
        for layer in self.model.layers:
            x = layer(x, cos, sin, blocked)
        logits = self.lm_head(self.model.norm(x)).float()
        return F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100)


_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}


def read_safetensors(path):
    """{name: tensor} of a safetensors file: an 8-byte little-endian header length, a JSON header,
    then the raw little-endian data at each tensor's data_offsets."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, _ = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + begin:base + end]), dtype=dtype)
        out[name] = t.reshape(info["shape"]).float()
    return out


def load_weights(model, path):
    weights = read_safetensors(path)
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in weights and not (n == "lm_head.weight" and model.a.tie)]
    if missing:
        raise SystemExit(f"{path}: missing {missing[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            if name in weights:
                if tuple(weights[name].shape) != tuple(p.shape):
                    raise SystemExit(f"{path}: {name}: shape {tuple(weights[name].shape)}, expected {tuple(p.shape)}")
                p.copy_(weights[name])


class Rows:
    """Batches of micro_batch rows, in order, cycling; `shard` of `shards` takes every shards-th
    batch-sized slice (rank r of a data-parallel job gets rows r*b .. r*b+b-1 of each step)."""

    def __init__(self, a, shard=0, shards=1):
        self.a = a
        self.shard = shard
        self.shards = shards
        self.next = 0
        if a.rows:
            with open(a.rows, "rb") as f:
                buf = bytearray(f.read())
            t = torch.frombuffer(buf, dtype=torch.int32)
            self.rows = t.reshape(-1, 4, a.seq).long()
        else:
            g = torch.Generator().manual_seed(a.seed)
            n = a.micro_batch * shards * 4
            ids = torch.randint(0, a.vocab, (n, a.seq), generator=g)
            labels = ids.clone()
            labels[:, 0] = -100
            pos = torch.arange(a.seq).expand(n, a.seq)
            seg = torch.ones(n, a.seq, dtype=torch.long)
            self.rows = torch.stack([ids, labels, pos, seg], dim=1)

    def batch(self):
        b = self.a.micro_batch
        n = self.rows.shape[0]
        idx = [(self.next + self.shard * b + i) % n for i in range(b)]
        self.next = (self.next + b * self.shards) % n
        r = self.rows[idx]
        return r[:, 0], r[:, 1], r[:, 2], r[:, 3]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=0, help="0: --heads")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--untied", dest="tie", action="store_false")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rows", default="", help="int32 [n, 4, seq] rows file")
    p.add_argument("--weights", default="", help="initial weights (safetensors, HF names)")
    a = p.parse_args(argv)
    if a.kv_heads == 0:
        a.kv_heads = a.heads
    return a


def make_model(a):
    torch.manual_seed(a.seed)
    model = Llama(a)
    if a.weights:
        load_weights(model, a.weights)
    model.train()
    return model


def train_steps(a, model, rows, optimizer, params, on_step_done=None):
    """Warmup + timed steps; returns (losses, step_seconds of the timed steps, CPU seconds of this
    process over the timed steps: every thread, so a figure that load on the machine barely moves)."""
    losses, seconds = [], []
    cpu_start = 0.0
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            cpu_start = time.process_time()
        start = time.perf_counter()
        ids, labels, pos, seg = rows.batch()
        loss = model(ids, pos, seg, labels)
        loss.backward()
        if a.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step_done:
            on_step_done()
        if step >= a.warmup:
            seconds.append(time.perf_counter() - start)
    return losses, seconds, time.process_time() - cpu_start


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    model = make_model(a)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    rows = Rows(a)
    losses, seconds, cpu_seconds = train_steps(a, model, rows, optimizer, params)
    tokens = a.micro_batch * a.seq
    print(json.dumps({
        "peer": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in params),
        "tokens_per_step": tokens, "step_seconds": seconds,
        "tokens_per_s": tokens * len(seconds) / sum(seconds),
        "tokens_per_cpu_s": tokens * len(seconds) / cpu_seconds,
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
