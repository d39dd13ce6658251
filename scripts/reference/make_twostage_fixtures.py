#!/usr/bin/env python3
"""Reference outputs of the two-stage steps (twostage_reference.py) on the tiny model, given fixed
masks, for Tests/ZeroSegTests/TwoStageGoldenTests.swift.

Input image: Tests/ZeroSegTests/Fixtures/seg/image.png (48x64, made by make_seg_fixtures.py).
Writes OUT/reference.safetensors (default Tests/ZeroSegTests/Fixtures/twostage) and OUT/README.md:
  masks                I32 [M, H, W]   the masks (1 inside), also written as OUT/masks/NNN.png
  <case>.onestage      F32 [R, H, W]   one-stage class probabilities (background row last)
  <case>.features      F32 [fgh, fgw, P] dense-feature grid (pooled cases)
  <case>.crops         F32 [M, 3, S, S] normalised crops (crop cases)
  <case>.embeddings    F32 [M, P]      region embeddings
  <case>.region        F32 [M, R]      region class probabilities
  <case>.fused         F32 [R, H, W]
  <case>.owner         I32 [H, W]      deciding mask, -1 none
  <case>.labels        I32 [H, W]      255 = background / below threshold
  metadata "cases" (JSON), "generator", "versions"

CLI:  python scripts/reference/make_twostage_fixtures.py [--out DIR]
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
import seg_reference as R  # noqa: E402
import synth  # noqa: E402
import twostage_reference as T  # noqa: E402

GENERATOR_NAME = "scripts/reference/make_twostage_fixtures.py"
GENERATOR_VERSION = "zeroseg-twostage-fixtures-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "twostage")
IMAGE = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "seg", "image.png")

SET_B = {"classes": [["cat", "kitten"], ["tree"], ["sofa", "couch"]], "background": ["wall", "floor"]}
SET_A = {"classes": [["cat"], ["dog"], ["grass"]], "background": []}
BASE = {"short_side": 80, "window": 64, "stride": 32, "use_windows": True, "templates": "single",
        "logit_scale": 40.0, "gaussian_std": 5.0, "method": "naclip", "threshold": 0.0}
CASES = [
    dict(BASE, name="crop_b", refine="none", region="crop", margin=0.1, lam=0.5, **SET_B),
    dict(BASE, name="crop_a_pamr_m0_l1", refine="pamr", region="crop", margin=0.0, lam=1.0, **SET_A),
    dict(BASE, name="pooled_b", refine="none", region="pooled", margin=0.1, lam=0.3, **SET_B),
]


def make_masks(h: int, w: int) -> np.ndarray:
    """Five masks: two overlapping boxes (one inside the other), a disc, a thin strip, an L shape."""
    yy, xx = np.mgrid[0:h, 0:w]
    m = [
        (yy >= 4) & (yy < 40) & (xx >= 6) & (xx < 44),          # big box
        (yy >= 10) & (yy < 22) & (xx >= 12) & (xx < 30),        # inside the big box: decides there
        (yy - 30) ** 2 + (xx - 50) ** 2 <= 11 ** 2,              # disc overlapping the big box
        (yy >= 42) & (yy < 46) & (xx >= 0) & (xx < 64),          # strip at the bottom
        ((yy < 8) & (xx >= 48)) | ((xx >= 58) & (yy < 20)),      # L in the top-right corner
    ]
    return np.stack(m, 0)


def write_pngs(masks: np.ndarray, out: str) -> None:
    from PIL import Image
    d = os.path.join(out, "masks")
    os.makedirs(d, exist_ok=True)
    for i, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8), mode="L").save(os.path.join(d, f"{i:03d}.png"))


@torch.no_grad()
def run_case(model, rgb, masks, c) -> dict:
    q = R.encode_queries(model, c["classes"], c["templates"], c["background"])
    r = R.segment(model, rgb, c["classes"], method=c["method"], refine=c["refine"], use_windows=c["use_windows"],
                  short_side=c["short_side"], window=c["window"], stride=c["stride"], templates=c["templates"],
                  background=c["background"], logit_scale=c["logit_scale"], threshold=c["threshold"],
                  gaussian_std=c["gaussian_std"], queries=q)
    rows = len(q["classes"]) + int(bool(q["background"]))
    t = {"onestage": r["scores"]}
    if c["region"] == "crop":
        crops = T.region_crops(rgb, masks, model.config.vision_config.image_size, c["margin"])
        emb = T.image_embeddings(model, crops)
        scale = float(model.logit_scale.exp())
        t["crops"] = crops
    else:
        grid = T.feature_grid(model, r["image"], c["method"], c["window"], c["stride"], c["use_windows"], c["gaussian_std"])
        emb = T.pooled_embeddings(grid, masks)
        scale = c["logit_scale"]
        t["features"] = grid
    region = T.region_probabilities(emb, q["embeddings"], q["class_of"], rows, scale)
    fused, owner = T.fuse(r["scores"], masks, region, c["lam"])
    labels = R.labels_from_scores(fused, len(q["classes"]), bool(q["background"]), c["threshold"])
    t.update({"embeddings": emb, "region": region, "fused": fused, "owner": owner.to(torch.int32),
              "labels": labels.to(torch.int32)})
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    rgb = R.load_rgb(IMAGE)
    masks = make_masks(*rgb.shape[:2])
    write_pngs(masks, args.out)
    from safetensors.torch import save_file
    tensors = {"masks": torch.from_numpy(masks.astype(np.int32))}
    with tempfile.TemporaryDirectory(prefix="zeroseg-twostage-tiny.") as tmp:
        synth.write_checkpoint("tiny", 0, tmp)
        model = R.load_model(tmp)
        for c in CASES:
            t = run_case(model, rgb, masks, c)
            for k, v in t.items():
                tensors[f"{c['name']}.{k}"] = v.detach().clone().contiguous()
            lab = t["labels"]
            print(f"{c['name']}: region probs max {float(t['region'].max()):.3f}, labels "
                  f"{ {int(k): int((lab == k).sum()) for k in lab.unique()} }", flush=True)
    meta = {"generator": {"script": GENERATOR_NAME, "version": GENERATOR_VERSION},
            "reference": {"script": T.TWOSTAGE_REFERENCE_NAME, "version": T.TWOSTAGE_REFERENCE_VERSION},
            "versions": dump_stages.versions(), "model": {"arch": "tiny", "seed": 0},
            "image": "Tests/ZeroSegTests/Fixtures/seg/image.png", "cases": CASES}
    path = os.path.join(args.out, "reference.safetensors")
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)
    v = meta["versions"]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("# two-stage reference (tiny model)\n\n"
                f"`reference.safetensors` and `masks/NNN.png` were made by `{GENERATOR_NAME}` ({GENERATOR_VERSION}) with "
                f"`{T.TWOSTAGE_REFERENCE_NAME}` ({T.TWOSTAGE_REFERENCE_VERSION}) and `{R.SEG_REFERENCE_NAME}` "
                f"({R.SEG_REFERENCE_VERSION}) on the synthetic tiny CLIP (synth.py, seed 0) and `../seg/image.png`; "
                f"python {v['python']}, torch {v['torch']}, transformers {v['transformers']}.\n\n"
                "Regenerate: `pip install -r scripts/reference/requirements.txt && "
                "python scripts/reference/make_twostage_fixtures.py`.\n\n"
                "Cases (NACLIP, windows 64/32, short side 80, templates single):\n\n"
                "| case | refine | region features | crop margin | lambda | classes | background |\n|---|---|---|---|---|---|---|\n"
                + "".join(f"| `{c['name']}` | {c['refine']} | {c['region']} | {c['margin']} | {c['lam']} | "
                          f"{', '.join('/'.join(n) for n in c['classes'])} | {', '.join(c['background']) or '-'} |\n" for c in CASES)
                + "\nMasks: a big box, a smaller box inside it, a disc overlapping the big box, a strip, an L shape "
                  "(`make_masks`). `TwoStageGoldenTests` reads `masks/*.png` through `readProposalMasks` and compares "
                  "every tensor (tolerances in the test).\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
