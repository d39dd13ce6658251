#!/usr/bin/env python3
"""Full-size (ViT-B/16, ViT-B/32) equivalence check against transformers.

For each arch: build HF CLIPModel with HF's own random init after torch.manual_seed(seed)
(NOT synth.py's RNG, so the Swift side is tested on an independently generated model),
set logit_scale = 2.6592 (seed = --seed + 0 for vit-b-16, + 1 for vit-b-32), save_pretrained (safetensors) + tokenizer files +
preprocessor_config.json into OUT/ARCH, dump stages with dump_stages.py into
OUT/ARCH/stages.safetensors and, with --zeroseg BIN, run
    BIN debug check-stages --model OUT/ARCH --stages OUT/ARCH/stages.safetensors

CLI:  python scripts/reference/fullsize_check.py [--arch vit-b-16 vit-b-32] [--seed 0]
          [--out /tmp/zeroseg-fullsize] [--zeroseg PATH] [--interp HxW]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import torch

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dump_stages  # noqa: E402
import synth  # noqa: E402

DEFAULT_OUT = "/tmp/zeroseg-fullsize"
# per-arch seed offset so the two models (whose text towers have identical shapes) differ
SEED_OFFSET = {"vit-b-16": 0, "vit-b-32": 1}


@contextmanager
def step(name: str):
    t0 = time.time()
    print(f"[{name}] ...", flush=True)
    yield
    print(f"[{name}] done in {time.time() - t0:.1f}s", flush=True)


def build_model_dir(arch: str, seed: int, out: str) -> None:
    from transformers import CLIPModel
    os.makedirs(out, exist_ok=True)
    cfg = synth.hf_config(arch)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(synth.LOGIT_SCALE)
    model.save_pretrained(out)
    synth.write_tokenizer_files(out)
    synth.write_preprocessor_config(out, cfg.vision_config.image_size)
    info = {"arch": arch, "seed": seed,
            "init": f"transformers CLIPModel default init after torch.manual_seed({seed}); logit_scale={synth.LOGIT_SCALE}",
            "generator": "scripts/reference/fullsize_check.py"}
    with open(os.path.join(out, "zeroseg_model_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    # the written key set must be exactly the one synth.py uses (same HF layout)
    from safetensors import safe_open
    with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
        keys = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    want = {k: tuple(s) for k, s in synth.tensor_specs(arch)}
    assert keys == want, (set(keys) ^ set(want), [k for k in want if k in keys and keys[k] != want[k]])
    assert dtypes == {"F32"}, dtypes
    synth.check_tokenizer(out)
    synth.load_strict(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["vit-b-16", "vit-b-32"], choices=["vit-b-16", "vit-b-32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--zeroseg", default=None, help="path to the zeroseg binary (runs `debug check-stages`)")
    ap.add_argument("--interp", type=dump_stages.parse_hw, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-build", action="store_true", help="reuse an existing model dir / stages file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rc = 0
    t_all = time.time()
    for arch in args.arch:
        mdir = os.path.join(args.out, arch)
        stages = os.path.join(mdir, "stages.safetensors")
        seed = args.seed + SEED_OFFSET[arch]
        if not (args.skip_build and os.path.exists(os.path.join(mdir, "model.safetensors"))):
            with step(f"{arch}: build (torch.manual_seed({seed})) + save_pretrained -> {mdir}"):
                build_model_dir(arch, seed, mdir)
        if not (args.skip_build and os.path.exists(stages)):
            with step(f"{arch}: dump stages -> {stages}"):
                dump_stages.dump(mdir, stages, args.interp, threads=args.threads)
        sizes = {f: os.path.getsize(os.path.join(mdir, f)) for f in sorted(os.listdir(mdir))}
        print(f"[{arch}] files: " + ", ".join(f"{k}={v/1e6:.1f}MB" for k, v in sizes.items()))
        if args.zeroseg:
            cmd = [args.zeroseg, "debug", "check-stages", "--model", mdir, "--stages", stages]
            with step(f"{arch}: {' '.join(cmd)}"):
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                print(p.stdout, end="")
                print(f"[{arch}] zeroseg exit code {p.returncode}")
                rc = rc or p.returncode
    print(f"[total] {time.time() - t_all:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
