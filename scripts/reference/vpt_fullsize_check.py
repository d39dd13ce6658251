#!/usr/bin/env python3
"""Full-size check of deep visual prompts (VisualPrompts.swift) against torch autograd: a random
ViT-B/16 CLIP (`synth.py --arch vit-b-16 --seed 0`), N = 10 prompt tokens per layer, 2 crops at
224 px, loss = sum(tokens * g) with seeded pixels, prompt parameters and g.

Writes DIR/model (the checkpoint) and DIR/inputs.safetensors, runs zeroseg through the gated test
`VisionBackwardTests/fullSizeDump` (`ZEROSEG_VPT_FULLSIZE=DIR swift test --filter ...`, in the
repository; it writes DIR/zeroseg.safetensors), then compares tokens (max abs, and relative to
max |ref|) and the five gradients (relative L2), float32 autograd also against float64.

CLI:  python scripts/reference/vpt_fullsize_check.py [--dir DIR] [--keep] [--skip-swift]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
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


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--skip-swift", action="store_true", help="use an existing DIR/zeroseg.safetensors")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.dir or tempfile.mkdtemp(prefix="zeroseg-vpt-fullsize.")
    os.makedirs(work, exist_ok=True)
    try:
        mdir = os.path.join(work, "model")
        if not os.path.exists(os.path.join(mdir, "model.safetensors")):
            synth.write_checkpoint("vit-b-16", 0, mdir)
        model = dump_stages.load_model(mdir)
        s = model.config.vision_config.image_size
        g = (s // model.config.vision_config.patch_size) ** 2
        pixels = torch.randn(args.batch, 3, s, s, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
        params = vpt.init_params(model, args.count, torch.Generator().manual_seed(2))
        upstream = torch.randn(args.batch, 1 + g, model.config.projection_dim, generator=torch.Generator().manual_seed(3),
                               dtype=torch.float64).float()
        from safetensors.torch import load_file, save_file
        save_file({"pixels": pixels, "upstream": upstream, **{k: v.contiguous() for k, v in params.items()}},
                  os.path.join(work, "inputs.safetensors"))
        tokens, grads = vpt.grads(model, pixels, params, upstream)
        model64 = dump_stages.load_model(mdir).double()
        tokens64, grads64 = vpt.grads(model64, pixels.double(), {k: v.double() for k, v in params.items()}, upstream.double())
        del model64
        if not args.skip_swift:
            env = dict(os.environ, ZEROSEG_VPT_FULLSIZE=work, ZEROSEG_THREADS=str(args.threads))
            subprocess.run(["swift", "test", "--filter", "VisionBackwardTests/fullSizeDump"], cwd=ROOT, env=env, check=True)
        z = load_file(os.path.join(work, "zeroseg.safetensors"))
        rows = {}
        mx = float(tokens64.abs().max())
        rows["tokens max abs (zeroseg vs torch float32)"] = float((z["tokens"] - tokens).abs().max())
        rows["tokens max abs / max |ref| (zeroseg vs torch float64)"] = float((z["tokens"].double() - tokens64).abs().max()) / mx
        rows["tokens max abs / max |ref| (torch float32 vs float64)"] = float((tokens.double() - tokens64).abs().max()) / mx
        for k in vpt.NAMES:
            rows[f"grad {k} rel L2 (zeroseg vs torch float32)"] = rel(z[f"grad.{k}"], grads[k])
            rows[f"grad {k} rel L2 (zeroseg vs torch float64)"] = rel(z[f"grad.{k}"], grads64[k])
            rows[f"grad {k} rel L2 (torch float32 vs float64)"] = rel(grads[k], grads64[k])
        print(json.dumps({"count": args.count, "batch": args.batch, "size": s, "max |tokens|": mx, "errors": rows}, indent=1))
        ok = all(v < 1e-3 for k, v in rows.items() if "grad" in k) and rows["tokens max abs / max |ref| (zeroseg vs torch float64)"] < 1e-4
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
