#!/usr/bin/env python3
"""Fixture for Tests/ZeroSegTests/HeadTests.swift: the image-conditioned heads (heads_reference.py)
on small seeded inputs, in float64 autograd.

Per head (`zeg`: ZegCLIPHeadRef P=24 D=16 heads 4 layers 2; `dense`: ContextDecoderRef P=24 Dc=16
heads 4 layers 2) and per loss kind (softmax, sigmoid): the scores [B, C, G], the loss, dL/dscores,
the gradient of every parameter and of the three inputs; then 3 AdamW steps (lr 1e-3, weight decay
0.01 on the Linear weights, betas 0.9/0.999, eps 1e-8, CosineAnnealingLR with T_max 6) with the
losses before each step and after the last, and the final parameters (zeg: sigmoid loss as ZegCLIP
trains; dense: softmax as DenseCLIP trains).

Inputs and parameters are not stored: both sides draw them from synth.py's generator (Synth.values
in Swift) under the names below, so the test rebuilds them bit for bit:
  inputs:  "heads-fixture:text" [C, P], ":global" [B, P], ":patches" [B, G, P]: amplitude 1, seed 5
  parameter NAME (seed 5, name "heads-fixture:" + NAME):
    Linear weight (2-D, ends in .weight): amplitude 1/sqrt(in); bias (.bias): amplitude 0.1;
    LayerNorm weight (1-D .weight): 1 + 0.2 u; gamma: amplitude 0.5; logit_scale: 2.0 (constant).
Targets [B, H, W] (int, -1 ignored; image 0 has no pixel of class 2) are stored.

CLI:  python scripts/reference/make_heads_fixture.py [--out Tests/ZeroSegTests/Fixtures/heads]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import heads_reference as HR  # noqa: E402
import synth  # noqa: E402

GENERATOR_NAME = "scripts/reference/make_heads_fixture.py"
GENERATOR_VERSION = "zeroseg-heads-fixture-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "heads")

P, C, B, GH, GW, H, W = 24, 3, 2, 4, 5, 16, 20
SEED = 5
LR, WD, STEPS, TOTAL = 1e-3, 0.01, 3, 6
CONFIGS = {
    "zeg": dict(width=16, heads=4, layers=2, kind="sigmoid"),
    "dense": dict(width=16, heads=4, layers=2, kind="softmax", log_scale=2.0),
}


def sv(name: str, shape, amplitude: float, offset: float = 0.0) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    v = synth.synth_values("heads-fixture:" + name, n, SEED, amplitude, offset)
    return torch.from_numpy(v.astype(np.float64)).reshape(shape)


def fixture_param(name: str, shape) -> torch.Tensor:
    if name == "logit_scale":
        return torch.tensor(2.0, dtype=torch.float64)
    if name == "gamma":
        return sv(name, shape, 0.5)
    if name.endswith(".weight") and len(shape) == 2:
        return sv(name, shape, 1 / math.sqrt(shape[1]))
    if name.endswith(".weight"):
        return sv(name, shape, 0.2, 1.0)
    if name.endswith(".bias"):
        return sv(name, shape, 0.1)
    raise ValueError(name)


def is_linear_weight(name: str, p: torch.Tensor) -> bool:
    return name.endswith(".weight") and p.dim() == 2


def targets() -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    t = torch.randint(0, C, (B, H, W), generator=g)
    t[0][t[0] == 2] = 1                          # class 2 absent from image 0
    ign = torch.rand((B, H, W), generator=g) < 0.15
    t[ign] = -1
    t[1, :3, :] = -1                             # an ignored band
    return t


def build(key: str) -> torch.nn.Module:
    cfg = CONFIGS[key]
    if key == "zeg":
        m = HR.ZegCLIPHeadRef(P, cfg["width"], cfg["heads"], cfg["layers"])
    else:
        m = HR.ContextDecoderRef(P, cfg["width"], cfg["heads"], cfg["layers"], cfg["log_scale"])
    m = m.double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(fixture_param(n, tuple(p.shape)))
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    text = sv("text", (C, P), 1.0)
    glob = sv("global", (B, P), 1.0)
    patches = sv("patches", (B, GH * GW, P), 1.0)
    tg = targets()
    out = {"targets": tg.to(torch.int32)}
    names = {}
    for key, cfg in CONFIGS.items():
        m = build(key)
        names[key] = [n for n, _ in m.named_parameters()]
        scores = m(text, glob, patches)
        out[f"{key}.scores"] = scores.detach()
        for kind in ("softmax", "sigmoid"):
            m.zero_grad()
            ins = [x.clone().requires_grad_(True) for x in (text, glob, patches)]
            s = m(*ins)
            s.retain_grad()
            loss = HR.seg_loss(kind, s, GH, GW, tg)
            loss.backward()
            out[f"{key}.{kind}.loss"] = loss.detach().reshape(1)
            out[f"{key}.{kind}.dscores"] = s.grad
            for n, p in m.named_parameters():
                out[f"{key}.{kind}.grad.{n}"] = p.grad if p.grad is not None else torch.zeros_like(p)
            for n, x in zip(("text", "global", "patches"), ins):
                out[f"{key}.{kind}.grad_input.{n}"] = x.grad
        # AdamW steps
        m = build(key)
        decay = [p for n, p in m.named_parameters() if is_linear_weight(n, p)]
        rest = [p for n, p in m.named_parameters() if not is_linear_weight(n, p)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                                lr=LR, betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL)
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = HR.seg_loss(cfg["kind"], m(text, glob, patches), GH, GW, tg)
            loss.backward()
            losses.append(loss.item())
            opt.step()
            sched.step()
        with torch.no_grad():
            losses.append(HR.seg_loss(cfg["kind"], m(text, glob, patches), GH, GW, tg).item())
        out[f"{key}.adamw.losses"] = torch.tensor(losses)
        for n, p in m.named_parameters():
            out[f"{key}.adamw.final.{n}"] = p.detach()
    meta = {
        "generator": json.dumps({"script": GENERATOR_NAME, "version": GENERATOR_VERSION}),
        "versions": json.dumps({"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}),
        "sizes": json.dumps({"P": P, "C": C, "B": B, "gh": GH, "gw": GW, "H": H, "W": W, "seed": SEED}),
        "configs": json.dumps(CONFIGS),
        "names": json.dumps(names),
        "optimizer": json.dumps({"kind": "adamw", "lr": LR, "weight_decay": WD, "betas": [0.9, 0.999], "eps": 1e-8,
                                 "schedule": "cosine", "total_steps": TOTAL, "steps": STEPS}),
    }
    from safetensors.torch import save_file
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference.safetensors")
    tensors = {k: (v.to(torch.float32) if v.dtype == torch.float64 else v).contiguous() for k, v in out.items()}
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    for key in CONFIGS:
        print(key, {k: float(out[f'{key}.{k}.loss']) for k in ('softmax', 'sigmoid')}, "adamw", out[f"{key}.adamw.losses"].tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
