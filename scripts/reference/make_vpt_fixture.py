#!/usr/bin/env python3
"""Reference outputs and gradients of deep visual prompts (ZegCLIP's VPT-deep; vpt_reference.py) on
the tiny synthetic CLIP, for Tests/ZeroSegTests/VisionBackwardTests.swift.

With transformers' CLIPModel (float32, eager attention) of `synth.py --arch tiny --seed 0` (vision
width 48, 2 layers, 4 heads, gelu, 64 px, patch 16: G = 16), N = 3 prompt tokens per layer, B = 2
crops of 64x64 (seeded randn pixels), seeded prompt parameters (vpt_reference.init_params) and a
seeded upstream gradient g on the output tokens; loss = sum(tokens * g); torch autograd.

Writes OUT/reference.safetensors (default Tests/ZeroSegTests/Fixtures/vpt) and OUT/README.md:
  pixels                       F32 [B, 3, 64, 64]
  visual_prompts.*             F32 the five prompt tensors ([L, N, W], [W, W], [W], [W], [W])
  upstream                     F32 [B, 1 + G, P]
  tokens                       F32 [B, 1 + G, P]    the prompted output tokens
  grad.visual_prompts.*        F32 d loss / d each prompt tensor
  plain_tokens                 F32 [B, 1 + G, P]    N = 0: visual_projection(post_layernorm(HF last_hidden_state))
  metadata (JSON strings): generator, versions, model, count, seeds, checks (float32 vs float64
  autograd; the N = 0 path vs transformers' own vision model)

CLI:  python scripts/reference/make_vpt_fixture.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import synth  # noqa: E402
import vpt_reference as vpt  # noqa: E402

GENERATOR_NAME = "scripts/reference/make_vpt_fixture.py"
GENERATOR_VERSION = "zeroseg-vpt-fixture-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "vpt")
N_PROMPTS = 3
BATCH = 2
PIXEL_SEED, PARAM_SEED, UPSTREAM_SEED = 5, 6, 7


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    checks: dict = {}
    with tempfile.TemporaryDirectory(prefix="zeroseg-vpt-tiny.") as tmp:
        synth.write_checkpoint("tiny", 0, tmp)
        model = dump_stages.load_model(tmp)
        model64 = dump_stages.load_model(tmp).double()
        vc = model.config.vision_config
        s = vc.image_size
        pixels = torch.randn(BATCH, 3, s, s, generator=torch.Generator().manual_seed(PIXEL_SEED), dtype=torch.float64).float()
        params = vpt.init_params(model, N_PROMPTS, torch.Generator().manual_seed(PARAM_SEED))
        g = (s // vc.patch_size) ** 2
        upstream = torch.randn(BATCH, 1 + g, model.config.projection_dim, generator=torch.Generator().manual_seed(UPSTREAM_SEED),
                               dtype=torch.float64).float()
        tokens, grads = vpt.grads(model, pixels, params, upstream)
        tokens64, grads64 = vpt.grads(model64, pixels.double(), {k: v.double() for k, v in params.items()}, upstream.double())
        checks["float32 vs float64 tokens (max abs / max |ref|)"] = float((tokens.double() - tokens64).abs().max() / tokens64.abs().max())
        for k in vpt.NAMES:
            checks[f"float32 vs float64 grad {k} (relative L2)"] = rel(grads[k], grads64[k])
        with torch.no_grad():
            zero = {k: (v[:, :0] if k == vpt.NAMES[0] else v) for k, v in params.items()}
            plain = vpt.prompted_tokens(model, pixels, zero)
            hf = model.vision_model(pixel_values=pixels).last_hidden_state
            hf_tokens = model.visual_projection(model.vision_model.post_layernorm(hf))
            checks["N = 0 path vs HF vision_model (max abs)"] = float((plain - hf_tokens).abs().max())
    tensors = {"pixels": pixels, "upstream": upstream, "tokens": tokens, "plain_tokens": plain}
    for k in vpt.NAMES:
        tensors[k] = params[k]
        tensors[f"grad.{k}"] = grads[k]
    tensors = {k: v.detach().float().contiguous().clone() for k, v in tensors.items()}
    for k, v in checks.items():
        assert v < 1e-4, (k, v)
    meta = {
        "generator": {"script": GENERATOR_NAME, "version": GENERATOR_VERSION},
        "versions": dump_stages.versions(),
        "model": {"arch": "tiny", "seed": 0, "init": f"{synth.GENERATOR_NAME} ({synth.GENERATOR_VERSION})",
                  "attn_implementation": "eager", "dtype": "float32"},
        "count": N_PROMPTS,
        "batch": BATCH,
        "seeds": {"pixels": PIXEL_SEED, "params": PARAM_SEED, "upstream": UPSTREAM_SEED},
        "loss": "sum(tokens * upstream)",
        "torch_num_threads": args.threads,
        "checks": checks,
    }
    from safetensors.torch import save_file
    path = os.path.join(args.out, "reference.safetensors")
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)
    v = meta["versions"]
    lines = [
        "# deep visual prompts reference (tiny model, ZegCLIP's VPT-deep)",
        "",
        f"`reference.safetensors` was made by `{GENERATOR_NAME}` ({GENERATOR_VERSION}) on the synthetic tiny CLIP "
        f"(`synth.py`, seed 0) with transformers' CLIPModel (float32, eager attention), ZegCLIP's deep-prompt logic "
        f"reimplemented in `scripts/reference/vpt_reference.py`, and torch autograd; python {v['python']}, torch "
        f"{v['torch']}, transformers {v['transformers']}, safetensors {v['safetensors']}.",
        "",
        "Regenerate (from the repo root): `pip install -r scripts/reference/requirements.txt && "
        "python scripts/reference/make_vpt_fixture.py`.",
        "",
        f"N = {N_PROMPTS} prompt tokens per layer, B = {BATCH} crops of 64x64, loss = sum(tokens * upstream). "
        "Tensors: see the docstring of the script. `VisionBackwardTests` compares tokens and the five gradients "
        "(tolerances in the test).",
        "",
        "Checks made by the script:",
        "",
    ] + [f"- {k}: {val:.3g}" for k, val in checks.items()] + [
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
    ] + [f"| `{k}` | {str(t.dtype).replace('torch.', '')} | {list(t.shape)} |" for k, t in sorted(tensors.items())]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for k, val in checks.items():
        print(f"  {k}: {val:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
