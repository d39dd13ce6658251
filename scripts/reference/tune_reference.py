#!/usr/bin/env python3
"""Torch autograd reference of `zeroseg tune`'s loss and gradients (Sources/ZeroSegTuning/Prompts.swift),
and the fixture for Tests/ZeroSegTests/TuneGoldenTests.swift.

Model (CLIP frozen):
  text:  t_c = normalise(text_projection(final_ln(transformer(embed([SOT] ctx.. name_c . [EOT])))[EOT]))
  image: u_g = normalise(f_g + A f_g + a)       f_g: dense patch embeddings (here: seeded random unit vectors)
  z[c, g] = exp(sigma) * u_g . t_c, bilinearly upsampled (align_corners=False) to the label size
  loss = mean cross-entropy over the seen classes at pixels with a seen label (others ignored).
AdamW (torch.optim.AdamW, weight decay on A only) with CosineAnnealingLR(T_max = steps).

PUBLIC CODE: CoOp (KaiyangZhou/CoOp, trainers/coop.py PromptLearner / TextEncoder): prompts
"X X .. X classname." tokenised by CLIP's tokenizer, the X embeddings replaced by the learned
context, pooled at the end token (argmax of the ids); the text transformer here is transformers'
CLIPTextTransformer run layer by layer on inputs_embeds (checked against text_model on token ids).

CLI:  python scripts/reference/tune_reference.py [--out Tests/ZeroSegTests/Fixtures/tune]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import seg_reference as R  # noqa: E402
import synth  # noqa: E402

GENERATOR_NAME = "scripts/reference/tune_reference.py"
GENERATOR_VERSION = "zeroseg-tune-reference-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "tune")


def coop_ids(name: str, n: int) -> list:
    import open_clip
    ids = open_clip.tokenize(["X " * n + name + "."], context_length=R.CONTEXT_LENGTH)[0].tolist()
    end = ids.index(R.EOT)
    return ids[:end + 1]


def act_fn(layer):
    return layer.mlp.activation_fn


def text_embedding(model, ids: list, ctx: torch.Tensor, ctx_range) -> torch.Tensor:
    """Projected (not normalised) embedding of one CoOp prompt; differentiable in ctx."""
    tm = model.text_model
    T = len(ids)
    tok = tm.embeddings.token_embedding.weight[torch.tensor(ids)]
    rows = [ctx[i - ctx_range[0]] if ctx_range[0] <= i < ctx_range[1] else tok[i] for i in range(T)]
    x = torch.stack(rows, 0) + tm.embeddings.position_embedding.weight[:T]
    x = x[None]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for layer in tm.encoder.layers:
        a = layer.self_attn
        h = layer.layer_norm1(x)
        nh, d = a.num_heads, a.head_dim
        q = a.q_proj(h).view(1, T, nh, d).transpose(1, 2)
        k = a.k_proj(h).view(1, T, nh, d).transpose(1, 2)
        v = a.v_proj(h).view(1, T, nh, d).transpose(1, 2)
        s = q @ k.transpose(-1, -2) * a.scale + mask
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(1, T, nh * d)
        x = x + a.out_proj(o)
        x = x + layer.mlp.fc2(act_fn(layer)(layer.mlp.fc1(layer.layer_norm2(x))))
    x = tm.final_layer_norm(x)
    return model.text_projection(x[0, T - 1])


def loss_fn(model, params: dict, names: list, n_ctx: int, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """feats [B, gh, gw, P] unit rows, targets int64 [B, H, W] (-1 ignored)."""
    B, gh, gw, P = feats.shape
    H, W = targets.shape[1:]
    t = []
    for nm in names:
        e = text_embedding(model, coop_ids(nm, n_ctx), params["ctx"], (1, 1 + n_ctx))
        t.append(e / e.norm())
    t = torch.stack(t, 0)                                             # [C, P]
    f = feats.reshape(B, gh * gw, P)
    pre = f + f @ params["A"].T + params["a"]
    u = pre / pre.norm(dim=-1, keepdim=True)
    z = torch.exp(params["sigma"]) * torch.einsum("bgp,cp->bcg", u, t).reshape(B, -1, gh, gw)
    up = F.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)
    return F.cross_entropy(up, targets, ignore_index=-1, reduction="mean")


def make_inputs(P: int, W: int, n_ctx: int):
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 3, 4, P, generator=g)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    targets = torch.randint(-1, 3, (2, 11, 13), generator=g)         # 3 seen classes, -1 ignored
    params = {"ctx": 0.02 * torch.randn(n_ctx, W, generator=g),
              "A": 0.05 * torch.randn(P, P, generator=g),
              "a": 0.05 * torch.randn(P, generator=g),
              "sigma": torch.tensor(math.log(40.0))}
    return feats, targets, params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    names = ["cat", "traffic light", "sofa"]
    n_ctx = 4
    with tempfile.TemporaryDirectory(prefix="zeroseg-tune-tiny.") as tmp:
        synth.write_checkpoint("tiny", 0, tmp)
        model = R.load_model(tmp)
        for p in model.parameters():
            p.requires_grad_(False)
        P, W = model.config.projection_dim, model.config.text_config.hidden_size
        # The layer-by-layer text transformer equals transformers' text_model on token ids.
        ids = coop_ids("cat", n_ctx)
        tok = model.text_model.embeddings.token_embedding.weight[torch.tensor(ids)]
        mine = text_embedding(model, ids, tok[1:1 + n_ctx], (1, 1 + n_ctx))
        ref = model.text_projection(model.text_model(input_ids=torch.tensor([ids])).pooler_output[0])
        assert torch.allclose(mine, ref, atol=1e-5), (mine - ref).abs().max()

        feats, targets, params = make_inputs(P, W, n_ctx)
        init = {k: v.clone() for k, v in params.items()}
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = loss_fn(model, leaf, names, n_ctx, feats, targets)
        loss.backward()
        grads = {k: leaf[k].grad.clone() for k in leaf}
        # A few AdamW steps (lr 0.01, weight decay 0.01 on A, cosine over the steps).
        opt_p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        opt = torch.optim.AdamW([{"params": [opt_p["ctx"], opt_p["a"], opt_p["sigma"]], "weight_decay": 0.0},
                                 {"params": [opt_p["A"]], "weight_decay": 0.01}], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
        losses = []
        for _ in range(args.steps):
            opt.zero_grad()
            l = loss_fn(model, opt_p, names, n_ctx, feats, targets)
            losses.append(float(l))
            l.backward()
            opt.step()
            sched.step()
        final = float(loss_fn(model, opt_p, names, n_ctx, feats, targets))
    t = {"features": feats, "targets": targets.to(torch.int32), "ctx": init["ctx"], "A": init["A"], "a": init["a"],
         "sigma": init["sigma"].reshape(1), "loss": loss.detach().reshape(1),
         "grad.ctx": grads["ctx"], "grad.A": grads["A"], "grad.a": grads["a"], "grad.sigma": grads["sigma"].reshape(1),
         "step_losses": torch.tensor(losses + [final]), "final.ctx": opt_p["ctx"].detach(), "final.A": opt_p["A"].detach()}
    ids_all = [coop_ids(n, n_ctx) for n in names]
    meta = {"generator": json.dumps({"script": GENERATOR_NAME, "version": GENERATOR_VERSION}),
            "versions": json.dumps(dump_stages.versions()), "names": json.dumps(names), "n_ctx": str(n_ctx),
            "ids": json.dumps(ids_all), "steps": str(args.steps),
            "optimizer": json.dumps({"kind": "adamw", "lr": 0.01, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                                     "schedule": "cosine", "decay_on": "A"})}
    from safetensors.torch import save_file
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference.safetensors")
    save_file({k: v.contiguous() for k, v in t.items()}, path, metadata=meta)
    os.chmod(path, 0o644)
    v = dump_stages.versions()
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("# prompt-tuning reference (tiny model)\n\n"
                f"Made by `{GENERATOR_NAME}` ({GENERATOR_VERSION}) with torch {v['torch']}, transformers "
                f"{v['transformers']}, open_clip_torch {v['open_clip_torch']} on the synthetic tiny CLIP (synth.py, seed 0).\n\n"
                "Regenerate: `pip install -r scripts/reference/requirements.txt && python scripts/reference/tune_reference.py`.\n\n"
                f"Inputs: seen names {names}, {n_ctx} context vectors, seeded random unit features [2, 3, 4, P], "
                "labels [2, 11, 13] in -1...2 (-1 ignored), adapter A, a and log scale sigma = log 40. Outputs: the loss, "
                f"autograd gradients of ctx, A, a, sigma, and the losses of {args.steps} AdamW steps (lr 0.01, weight decay 0.01 "
                "on A, cosine schedule) plus the loss after them.\n")
    print(f"loss {float(loss):.6f}, steps {losses} -> {final:.6f}; wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
