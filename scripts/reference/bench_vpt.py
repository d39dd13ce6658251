#!/usr/bin/env python3
"""PyTorch side of `zeroseg bench --cases vpt_step`: one training step of deep visual prompts
(ZegCLIP's VPT-deep, vpt_reference.py; transformers' CLIPModel, eager attention, float32) at 224 px
with N prompt tokens per layer — forward with autograd + backward, requires_grad on the five prompt
tensors only — against one plain forward of the same batch under torch.no_grad
(vision_model(pixel_values).last_hidden_state), torch.set_num_threads(T). Best of --repeats after
one warm-up; also the peak RSS of the process.

CLI:  python scripts/reference/bench_vpt.py [--model DIR] [--batches 1,8] [--count 10] [--threads 2]
      (default model: a random ViT-B/16 from synth.py in a temporary folder)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import synth  # noqa: E402
import vpt_reference as vpt  # noqa: E402


def best(repeats: int, f) -> float:
    f()
    b = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        b = min(b, time.perf_counter() - t0)
    return b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = None
    mdir = args.model
    if mdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="zeroseg-bench-vpt.")
        mdir = tmp.name
        synth.write_checkpoint("vit-b-16", 0, mdir)
    model = dump_stages.load_model(mdir)
    for p in model.parameters():
        p.requires_grad_(False)
    s = model.config.vision_config.image_size
    params = vpt.init_params(model, args.count, torch.Generator().manual_seed(2))
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        px = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(1))
        g = (s // model.config.vision_config.patch_size) ** 2
        up = torch.randn(b, 1 + g, model.config.projection_dim, generator=torch.Generator().manual_seed(3))

        def forward():
            with torch.no_grad():
                model.vision_model(pixel_values=px).last_hidden_state

        def step():
            ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
            (vpt.prompted_tokens(model, px, ps) * up).sum().backward()

        f = best(args.repeats, forward)
        st = best(args.repeats, step)
        rows.append({"batch": b, "forward_s": f, "step_s": st, "ratio": st / f})
        print(f"torch batch {b}: plain forward {f:.3f} s, VPT step (N={args.count}) {st:.3f} s, x{st / f:.2f}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS: {rss / 1e6:.0f} MB")
    print(json.dumps({"threads": args.threads, "count": args.count, "size": s, "torch": torch.__version__, "rows": rows,
                      "peak_rss_bytes": rss}))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
