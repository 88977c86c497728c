#!/usr/bin/env python3
"""PyTorch eager reference for examples/train_bench.rs: the same GPT models, step and measurement.

Pre-LN GPT, rotary attention (head dim 32, rotate-half, theta 10000), MLP 4*d with exact GELU, dropout 0.1
(embeddings, attention probabilities, attention output, MLP output), untied head without bias, vocab 4096,
context 256, batch 16, fp32, random token ids; step = forward, backward, global-norm clip 1.0, AdamW
(lr 3e-4, weight decay 0.1). Prints tokens/s per config (median of the timed steps, with min-max).

    python3 benches/torch_cpu_train.py --threads 2
    python3 benches/torch_cpu_train.py --threads 1
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, CONTEXT, BATCH, HEAD_DIM, DROPOUT = 4096, 256, 16, 32, 0.1


def rotary(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = torch.cat([cos, cos], -1)
    sin = torch.cat([sin, sin], -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.h = d // HEAD_DIM
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.h, HEAD_DIM).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=DROPOUT, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, d)
        x = x + F.dropout(self.proj(y), DROPOUT, True)
        x = x + F.dropout(self.out(F.gelu(self.fc(self.ln2(x)))), DROPOUT, True)
        return x


class Gpt(nn.Module):
    def __init__(self, layers, d):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        half = HEAD_DIM // 2
        inv = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) * 2 / HEAD_DIM)
        ang = torch.arange(CONTEXT, dtype=torch.float32)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())

    def forward(self, ids, targets):
        x = F.dropout(self.wte(ids), DROPOUT, True)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="3x128,6x128,12x128,4x256")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(7)
    for cfg in a.configs.split(","):
        layers, d = map(int, cfg.split("x"))
        model = Gpt(layers, d).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        tps = []
        for step in range(a.warmup + a.steps):
            ids = torch.randint(0, VOCAB, (BATCH, CONTEXT))
            tg = torch.randint(0, VOCAB, (BATCH, CONTEXT))
            t0 = time.perf_counter()
            loss = model(ids, tg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            dt = time.perf_counter() - t0
            if step >= a.warmup:
                tps.append(BATCH * CONTEXT / dt)
        print(
            f"torch {torch.__version__} threads {a.threads}  {layers:>2}x{d:<3}  {statistics.median(tps):>8.0f} tok/s"
            f"  (min {min(tps):.0f}, max {max(tps):.0f})  loss {loss.item():.3f}"
        )


if __name__ == "__main__":
    main()
