#!/usr/bin/env python3
"""Prints the recipe tables of docs/recipe.md from the learning-rate runs' logs.

usage: python3 docs/recipe/table.py [RUNS_DIR]   (default docs/recipe/runs)

Each run folder holds a log.jsonl written by the training loop (a `start` line with the preset and recipe, step
lines, validation points, and a `final` line). A run without a final line is shown at its last validation point.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/recipe/runs")
rows = []
for log in sorted(root.glob("*/log.jsonl")):
    start, final, vals = None, None, []
    for line in log.read_text().splitlines():
        d = json.loads(line)
        if d.get("event") == "start":
            start = d
        elif d.get("event") == "final":
            final = d
        elif d.get("val_loss") is not None:
            vals.append((d["tokens"], d["val_loss"]))
    tr, cfg = start["train"], start["config"]
    at = {t: v for t, v in vals}
    rows.append(
        dict(
            run=log.parent.name,
            preset=start["preset"],
            batch=f'{tr["batch_size"]} x {tr["seq_len"]}',
            lr=tr["lr"],
            opt=tr.get("optimizer", "adamw"),
            dropout=cfg["dropout"],
            floor=tr.get("min_lr_fraction", 0.1),
            ema=tr.get("ema_decay", 0.0),
            seed=cfg.get("seed", 0),
            budget=tr["max_tokens"],
            v262=at.get(262144),
            v524=at.get(524288),
            last=vals[-1] if vals else None,
            final=final,
        )
    )

f = lambda x: "—" if x is None else f"{x:.3f}"
print(
    "| run | preset | batch | optimizer | peak LR | floor | weight average | dropout | seed | tokens | val @ 262K | val @ 524K | final val (nats) "
    "| final test (bits/byte) |"
)
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    fin = r["final"]
    if fin:
        fv, ft = f(fin["val_loss"]), f(fin["test_bpb"])
    elif r["last"]:
        fv, ft = f"unfinished: {f(r['last'][1])} at {r['last'][0] / 1e6:.2f}M", "—"
    else:
        continue
    print(
        f'| {r["run"]} | {r["preset"]} | {r["batch"]} | {r["opt"]} | {r["lr"]:.1e} | {r["floor"]:.2g} | {r["ema"] or "—"} | {r["dropout"]:.2g} | '
        f'{r["seed"]} | {r["budget"] / 1e6:.2f}M | {f(r["v262"])} | '
        f'{f(r["v524"])} | {fv} | {ft} |'
    )
