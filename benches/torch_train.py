#!/usr/bin/env python3
"""PyTorch twin of the paper's Small GPT (preset `small`), for tokens/s and MFU on the same GPU as train_small.

    python3 benches/torch_train.py [--steps 8] [--micro 8]

A benchmark, not a test: random tokens (speed only). Same model as candle-structured's `small` preset: tied
embedding/head (vocab 50,262), 12 pre-LayerNorm blocks of width 768 with 12 heads, rotary embeddings
(rotate-half, base 10,000), causal attention, MLP 768 -> 3072 -> 768 with exact (erf) GELU, dropout 0.1, final
LayerNorm; AdamW (0.9, 0.95), weight decay 0, gradient clipping 1.0; batch 80 sequences of 1024 tokens.

Modes: f32 (plain fp32 matmuls, as candle's f32 path), tf32, and bf16 autocast with flash attention (PyTorch's
fast path). MFU = model FLOPs/s over the H100 SXM dense bf16 peak (989.4 TFLOP/s), with model FLOPs per token
6·N (N: parameters in matmuls, embedding/head included) + 12·layers·d·T (attention scores and values).
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, D, HEADS, LAYERS, T, BATCH = 50262, 768, 12, 12, 1024, 80
PEAK = 989.4e12


def rotary(t, hd, device):
    inv = 10000.0 ** (-torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd)
    f = torch.outer(torch.arange(t, device=device, dtype=torch.float32), inv)
    return f.cos(), f.sin()


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    c = torch.cat((cos, cos), -1)
    s = torch.cat((sin, sin), -1)
    return x * c + torch.cat((-x2, x1), -1) * s


class Block(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc, self.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        self.p = p

    def forward(self, x, cos, sin, flash):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).view(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if flash:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        else:
            att = (q @ k.transpose(-1, -2)) / math.sqrt(d // HEADS)
            mask = torch.ones(t, t, device=x.device, dtype=torch.bool).triu(1)
            att = F.dropout(att.masked_fill(mask, float("-inf")).softmax(-1), self.p, self.training)
            y = att @ v
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)), self.p, self.training)
        m = self.out(F.gelu(self.fc(self.ln2(x))))
        return x + F.dropout(m, self.p, self.training)


class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList(Block(0.1) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D)

    def forward(self, idx, targets, flash):
        x = F.dropout(self.wte(idx), 0.1, self.training)
        cos, sin = rotary(idx.shape[1], D // HEADS, idx.device)
        for blk in self.blocks:
            x = blk(x, cos, sin, flash)
        logits = self.ln(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, VOCAB), targets.reshape(-1))


def run(mode, steps, micro):
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.manual_seed(0)
    model = Gpt().cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.0)
    n_mat = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    flops_tok = 6 * n_mat + 12 * LAYERS * D * T
    bf16, flash = mode == "bf16", mode == "bf16"
    data = torch.randint(0, VOCAB, (BATCH, T + 1), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        for i in range(0, BATCH, micro):
            chunk = data[i : i + micro]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = model(chunk[:, :-1], chunk[:, 1:], flash) * (chunk.shape[0] / BATCH)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = steps * BATCH * T / dt
    mfu = tps * flops_tok / PEAK
    print(f"| torch {mode:5} | micro {micro} | {tps:9.0f} tokens/s | {flops_tok / 1e9:.3f} GFLOP/token | MFU {100 * mfu:5.1f}% |")
    del model, opt
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--modes", default="f32,tf32,bf16")
    a = ap.parse_args()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; Small GPT, batch {BATCH}x{T}")
    for mode in a.modes.split(","):
        run(mode, a.steps, a.micro)


if __name__ == "__main__":
    main()
