#!/usr/bin/env python3
"""End-to-end reference of one training step of an image-conditioned head
(Sources/ZeroSegTuning/HeadTraining.swift `headLossAndGradients`, `TensorOptimizer`) on the tiny
synthetic CLIP, for Tests/ZeroSegTests/HeadTuneGoldenTests.swift.

Composes the existing torch references (nothing re-implemented here):
  text:    tune_reference.coop_ids / text_embedding   CoOp prompts "X X name." of the seen names, the
           X rows replaced by ctx [N, Wt], raw text_projection output at the end token   -> t [C, P]
  vision:  vpt_reference.prompted_tokens              deep visual prompts                -> [B, 1+G, P]
           global = tokens[:, 0], patches = tokens[:, 1:]
  head:    heads_reference.ZegCLIPHeadRef / ContextDecoderRef (t, global, patches)     -> scores [B, C, G]
  loss:    heads_reference.seg_loss(kind, scores, gh, gw, targets)
with transformers' CLIPModel of `synth.py --arch tiny --seed 0` (eager attention) in float64
(stored as float32) and torch autograd into ctx, the five visual prompt tensors and every head
tensor (CLIP frozen).

Cases: `zeg` = ZegCLIP head (width 16, 4 heads, 2 layers) with the softmax loss, `dense` =
DenseCLIP context decoder (width 16, 4 heads, 2 layers) with the sigmoid loss (focal x20 + dice);
the other loss of each head: the loss value only. Per case: the loss, every gradient, then 3
AdamW steps (torch.optim.AdamW lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on the head's
Linear weights only, CosineAnnealingLR T_max 6) on the same batch: the loss before each step and
after the last, and the final parameters.

Inputs (B = 2 crops of 64x64, the tiny model's size: grid 4x4, no position interpolation):
  pixels   synth.synth_values("headtune-fixture:pixels", B*3*64*64, seed 5, amplitude 1.5)  (not stored;
           Swift: Synth.values)
  targets  stored, int32 [B, 64, 64]: 8x8 blocks of seeded labels 0/1 with ~10% ignored pixels (-1) and
           an ignored band; image 0 has no pixel of class 1 ("traffic light")
  ctx      stored (init.ctx), randn(N, Wt, seed 11) * std(token_embedding), N = 2
  visual   stored (init.visual_prompts.*), vpt_reference.init_params(model, 2, seed 12) (norm perturbed)
  head     not stored: make_heads_fixture.fixture_param (synth.py values named "heads-fixture:" + NAME,
           seed 5; the rule of HeadTests.fixtureParameter)

Tensors (F32 unless said):
  targets I32 [B, 64, 64]; init.ctx; init.visual_prompts.* (five)
  <case>.loss [1]; <case>.other_loss [1] (the head with the other loss kind)
  <case>.grad.NAME for every learned NAME (zeros where autograd gives None)
  <case>.adamw.losses [4]; <case>.adamw.final.NAME
Metadata (JSON): generator, versions, model, names, n_ctx, ids, visual_prompts, crop, seeds, cases,
  parameter names per case, no_grad (parameters whose autograd gradient is None), optimizer, checks
  (float32 vs float64 autograd).

CLI:  python scripts/reference/make_headtune_fixture.py [--out Tests/ZeroSegTests/Fixtures/headtune]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import heads_reference as HR  # noqa: E402
import make_heads_fixture as MHF  # noqa: E402
import synth  # noqa: E402
import tune_reference as TR  # noqa: E402
import vpt_reference as VPT  # noqa: E402

GENERATOR_NAME = "scripts/reference/make_headtune_fixture.py"
GENERATOR_VERSION = "zeroseg-headtune-fixture-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "headtune")

NAMES = ["cat", "traffic light"]
N_CTX, N_VISUAL, B, CROP = 2, 2, 2, 64
PIXEL_SEED, TARGET_SEED, CTX_SEED, VISUAL_SEED = 5, 7, 11, 12
PIXEL_AMPLITUDE = 1.5
LR, WD, STEPS, TOTAL = 1e-3, 0.01, 3, 6
CASES = {
    "zeg": dict(head="zegclip", width=16, heads=4, layers=2, loss="softmax", other="sigmoid"),
    "dense": dict(head="denseclip", width=16, heads=4, layers=2, loss="sigmoid", other="softmax"),
}


def pixels() -> torch.Tensor:
    v = synth.synth_values("headtune-fixture:pixels", B * 3 * CROP * CROP, PIXEL_SEED, PIXEL_AMPLITUDE, 0.0)
    return torch.from_numpy(v.astype(np.float64)).reshape(B, 3, CROP, CROP)


def targets() -> torch.Tensor:
    g = torch.Generator().manual_seed(TARGET_SEED)
    coarse = torch.randint(0, 2, (B, 8, 8), generator=g)
    t = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    t[0] = 0                                          # class 1 absent from image 0 (sigmoid: not "present")
    t[0, 16:40, 8:30] = 0
    ign = torch.rand((B, CROP, CROP), generator=g) < 0.1
    t[ign] = -1
    t[1, :, 60:] = -1                                 # an ignored band
    t[0, 50:, :] = -1
    return t


def build_head(case: str, P: int) -> torch.nn.Module:
    c = CASES[case]
    if c["head"] == "zegclip":
        m = HR.ZegCLIPHeadRef(P, c["width"], c["heads"], c["layers"])
    else:
        m = HR.ContextDecoderRef(P, c["width"], c["heads"], c["layers"], 0.0)
    m = m.double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(MHF.fixture_param(n, tuple(p.shape)))
    return m


class Step:
    """The whole step: learned tensors as leaves (ctx, visual prompts) + the head module."""

    def __init__(self, model, head, ctx, visual):
        self.model, self.head = model, head
        dt = next(model.parameters()).dtype
        self.ctx = ctx.to(dt).clone().requires_grad_(True)
        self.visual = {k: v.to(dt).clone().requires_grad_(True) for k, v in visual.items()}
        self.head.to(dt)
        self.ids = [TR.coop_ids(n, N_CTX) for n in NAMES]

    def named(self) -> list:
        return [("ctx", self.ctx)] + [(k, self.visual[k]) for k in VPT.NAMES] + list(self.head.named_parameters())

    def loss(self, px: torch.Tensor, tg: torch.Tensor, kind: str) -> torch.Tensor:
        text = torch.stack([TR.text_embedding(self.model, ids, self.ctx, (1, 1 + N_CTX)) for ids in self.ids])
        tokens = VPT.prompted_tokens(self.model, px.to(self.ctx.dtype), self.visual)
        g = CROP // self.model.config.vision_config.patch_size
        scores = self.head(text, tokens[:, 0], tokens[:, 1:])
        return HR.seg_loss(kind, scores, g, g, tg)


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-300))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict = {}
    checks: dict = {}
    names: dict = {}
    no_grad: dict = {}
    zero_grad: dict = {k: {} for k in CASES}
    px, tg = pixels(), targets()
    out["targets"] = tg.to(torch.int32)
    with tempfile.TemporaryDirectory(prefix="zeroseg-headtune-tiny.") as tmp:
        synth.write_checkpoint("tiny", 0, tmp)
        model32 = dump_stages.load_model(tmp)
        model = dump_stages.load_model(tmp).double()
        for m in (model, model32):
            for p in m.parameters():
                p.requires_grad_(False)
        P, Wt = model.config.projection_dim, model.config.text_config.hidden_size
        tok = model32.text_model.embeddings.token_embedding.weight
        ctx = (torch.randn(N_CTX, Wt, generator=torch.Generator().manual_seed(CTX_SEED), dtype=torch.float64)
               * float(tok.std())).float()
        visual = VPT.init_params(model32, N_VISUAL, torch.Generator().manual_seed(VISUAL_SEED))
        out["init.ctx"] = ctx
        for k in VPT.NAMES:
            out[f"init.{k}"] = visual[k]
        for case, c in CASES.items():
            # loss and gradients (float64, and float32 as a check)
            s = Step(model, build_head(case, P), ctx, visual)
            loss = s.loss(px, tg, c["loss"])
            loss.backward()
            names[case] = [n for n, _ in s.named()]
            no_grad[case] = [n for n, p in s.named() if p.grad is None]
            out[f"{case}.loss"] = loss.detach().reshape(1)
            for n, p in s.named():
                out[f"{case}.grad.{n}"] = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            with torch.no_grad():
                out[f"{case}.other_loss"] = s.loss(px, tg, c["other"]).reshape(1)
            s32 = Step(model32, build_head(case, P).float(), ctx, visual)
            l32 = s32.loss(px, tg, c["loss"])
            l32.backward()
            checks[f"{case}: float32 vs float64 loss (relative)"] = abs(l32.item() - loss.item()) / abs(loss.item())
            total = float(torch.cat([out[f"{case}.grad.{n}"].flatten() for n in names[case]]).norm())
            for n, p in s32.named():
                ref = out[f"{case}.grad.{n}"]
                if float(ref.norm()) > 1e-6 * total:
                    checks[f"{case}: float32 vs float64 grad {n} (relative L2)"] = rel(p.grad, ref)
                else:  # zero by construction (None, or rounding noise): both norms relative to the whole gradient
                    zero_grad[case][n] = [float(ref.norm()) / total,
                                          (float(p.grad.norm()) if p.grad is not None else 0.0) / total]
            # AdamW steps
            s = Step(model, build_head(case, P), ctx, visual)
            decay = [p for n, p in s.head.named_parameters() if MHF.is_linear_weight(n, p)]
            rest = [s.ctx] + [s.visual[k] for k in VPT.NAMES] + \
                [p for n, p in s.head.named_parameters() if not MHF.is_linear_weight(n, p)]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                                    lr=LR, betas=(0.9, 0.999), eps=1e-8)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL)
            losses = []
            for _ in range(STEPS):
                opt.zero_grad()
                l = s.loss(px, tg, c["loss"])
                l.backward()
                losses.append(float(l))
                opt.step()
                sched.step()
            with torch.no_grad():
                losses.append(float(s.loss(px, tg, c["loss"])))
            out[f"{case}.adamw.losses"] = torch.tensor(losses)
            for n, p in s.named():
                out[f"{case}.adamw.final.{n}"] = p.detach()
                if n in no_grad[case]:   # torch's AdamW skips them entirely (no decay either)
                    assert torch.equal(p.detach(), dict(Step(model, build_head(case, P), ctx, visual).named())[n].detach()), n
        versions = dump_stages.versions()
    tensors = {k: (v.to(torch.float32) if v.dtype == torch.float64 else v).detach().contiguous().clone() for k, v in out.items()}
    for k, v in checks.items():
        assert v < 1e-3, (k, v)
    meta = {
        "generator": {"script": GENERATOR_NAME, "version": GENERATOR_VERSION},
        "versions": versions,
        "model": {"arch": "tiny", "seed": 0, "init": f"{synth.GENERATOR_NAME} ({synth.GENERATOR_VERSION})",
                  "attn_implementation": "eager", "dtype": "float64 (stored float32)"},
        "names": NAMES,
        "n_ctx": N_CTX,
        "ids": [TR.coop_ids(n, N_CTX) for n in NAMES],
        "visual_prompts": N_VISUAL,
        "batch": B,
        "crop": CROP,
        "seeds": {"pixels": f"synth_values('headtune-fixture:pixels', seed {PIXEL_SEED}, amplitude {PIXEL_AMPLITUDE})",
                  "targets": TARGET_SEED, "ctx": CTX_SEED, "visual": VISUAL_SEED,
                  "head": "make_heads_fixture.fixture_param (synth 'heads-fixture:' + NAME, seed 5)"},
        "cases": CASES,
        "parameters": names,
        "no_grad": no_grad,
        "optimizer": {"kind": "adamw", "lr": LR, "weight_decay": WD, "betas": [0.9, 0.999], "eps": 1e-8,
                      "schedule": "cosine", "total_steps": TOTAL, "steps": STEPS, "decay_on": "the head's Linear weights"},
        "torch_num_threads": args.threads,
        "checks": checks,
        "zero_gradients": zero_grad,
    }
    from safetensors.torch import save_file
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference.safetensors")
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)
    v = versions
    worst = max(checks.values())
    summary: dict = {}
    for k, val in checks.items():
        case, what = k.split(": ", 1)
        group = "loss" if "loss" in what else ("text ctx" if " ctx " in what else
                                               "visual prompts" if "visual_prompts" in what else "head")
        key = f"{case}: {group} (worst)"
        summary[key] = max(summary.get(key, 0.0), val)
    lines = [
        "# head-training step reference (tiny model, text + visual prompts + head + loss + AdamW)",
        "",
        f"`reference.safetensors` was made by `{GENERATOR_NAME}` ({GENERATOR_VERSION}) on the synthetic tiny CLIP "
        f"(`synth.py`, seed 0) with transformers' CLIPModel (eager attention) in float64, stored as float32, composing "
        "`tune_reference.py` (CoOp text), `vpt_reference.py` (deep visual prompts) and `heads_reference.py` (heads, "
        f"losses); python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, open_clip_torch "
        f"{v['open_clip_torch']}, safetensors {v['safetensors']}.",
        "",
        "Regenerate (from the repo root): `pip install -r scripts/reference/requirements.txt && "
        "python scripts/reference/make_headtune_fixture.py`.",
        "",
        f"Seen names {NAMES}, {N_CTX} context vectors, {N_VISUAL} visual prompt tokens per layer, {B} crops of "
        f"{CROP}x{CROP} (seeded synth pixels, not stored; targets stored, -1 ignored, class 1 absent from image 0). "
        "Cases: `zeg` = ZegCLIP head (width 16, 4 heads, 2 layers) + softmax loss; `dense` = DenseCLIP context "
        "decoder (width 16, 4 heads, 2 layers) + sigmoid loss (the other loss: value only). Per case: loss, the "
        f"gradient of every learned tensor, {STEPS} AdamW steps (lr {LR}, weight decay {WD} on the head's Linear "
        f"weights, cosine over {TOTAL} steps): losses and final parameters. Initial ctx and visual prompts are "
        "stored; the head's initial parameters come from synth.py's generator (`HeadTests.fixtureParameter`).",
        "",
        "Autograd gives no gradient (None; stored as zeros) for: "
        + "; ".join(f"{k}: {', '.join(vv) if vv else 'none'}" for k, vv in no_grad.items())
        + ". torch's AdamW skips those tensors (no weight decay either).",
        "",
        "Gradients that are zero by construction (norm <= 1e-6 of the whole gradient's in float64; listed: "
        "float64 and float32 norms relative to the whole gradient): "
        + "; ".join(f"{k}: " + ", ".join(f"{n} ({a:.1e}, {b:.1e})" for n, (a, b) in d.items()) for k, d in zero_grad.items())
        + ".",
        "",
        f"Checks made by the script (float32 vs float64 torch autograd, relative L2 per tensor, worst per group; worst {worst:.3g}):",
        "",
    ] + [f"- {k}: {val:.3g}" for k, val in summary.items()] + [
        "",
        "(every tensor's check is in the metadata, `checks`).",
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
    ] + [f"| `{k}` | {str(t.dtype).replace('torch.', '')} | {list(t.shape)} |" for k, t in sorted(tensors.items())]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    for case in CASES:
        print(case, "loss", float(out[f"{case}.loss"]), "other", float(out[f"{case}.other_loss"]),
              "adamw", out[f"{case}.adamw.losses"].tolist(), "no_grad", no_grad[case])
    print("worst float32 vs float64 check", worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
