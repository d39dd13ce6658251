#!/usr/bin/env python3
"""Reference outputs of the one-stage segmentation pipeline (seg_reference.py) on the tiny model,
for Tests/ZeroSegTests/SegmentationGoldenTests.swift.

Writes into OUT (default Tests/ZeroSegTests/Fixtures/seg):
  image.png               48x64 RGB: examples/chelsea.jpg cropped to (40, 20, 440, 320) and resized
                          to 64x48 with Pillow's BICUBIC filter (regenerated only with --remake-image)
  reference.safetensors   per case `<case>.<tensor>`:
                            queries  F32 [Q, P]      class embeddings (names in query order)
                            windows  I64 [n, 4]      (y1, y2, x1, x2), SCLIP/NACLIP forward_slide order
                            raw      F32 [Q, H, W]   averaged window logits at the original size
                            refined  F32 [Q, H, W]   after PAMR (only with refine = pamr)
                            scores   F32 [R, H, W]   probabilities, R = classes (+ 1 background row, last)
                            labels   I32 [H, W]      0..C-1, 255 = background / below threshold
                            rescaled F32 [3, Hs, Ws] normalised rescaled image (first case only)
                          metadata: "cases" (JSON list of case dicts, see CASES; thresholds resolved),
                          "generator", "versions", "model", "image"
  README.md               command, versions, case table

The tiny model (synth.py arch tiny, seed 0) is written to a temporary directory; the Swift tests
regenerate it bit-for-bit with `Synth`.

CLI:  python scripts/reference/make_seg_fixtures.py [--out DIR] [--remake-image]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import torch

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import seg_reference as R  # noqa: E402
import synth  # noqa: E402

GENERATOR_NAME = "scripts/reference/make_seg_fixtures.py"
GENERATOR_VERSION = "zeroseg-seg-fixtures-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "seg")

IMAGE_SOURCE = os.path.join(ROOT, "examples", "chelsea.jpg")
IMAGE_CROP = (40, 20, 440, 320)  # PIL box (left, upper, right, lower)
IMAGE_SIZE = (64, 48)  # (width, height)

# Two class sets: A plain; B with synonyms, two background names and a threshold.
SET_A = {"classes": [["cat"], ["dog"], ["grass"]], "background": [], "threshold": 0.0}
SET_B = {"classes": [["cat", "kitten"], ["tree"], ["sofa", "couch"]], "background": ["wall", "floor"],
         "threshold": "median"}  # resolved to round(median winning probability, 2) (thr 0 pass first)
# C: 12 names (more than Segmenter.segment's default chunk of 8 queries), background, threshold.
SET_C = {"classes": [["cat", "kitten", "tabby"], ["dog"], ["grass", "lawn"], ["tree"], ["sofa", "couch"], ["blanket"]],
         "background": ["sky", "floor"], "threshold": "median"}

# Tiny model: image 64, patch 16. The 48x64 image is rescaled to short side 80 -> 80x107, so
# window 64 / stride 32 gives 2x3 = 6 windows of 4x4 patches (native grid), window 48 / stride 24
# 3x4 = 12 windows of 3x3 patches (interpolated position embeddings), window 96 / stride 48 two
# 80x96 windows of 5x6 patches, no window one 5x6 grid.
BASE = {"short_side": 80, "window": 64, "stride": 32, "use_windows": True, "refine": "none",
        "templates": "single", "logit_scale": 40.0, "gaussian_std": 5.0}


def _case(name, method, sets, **kw):
    c = dict(BASE)
    c.update(sets)
    c.update(kw)
    c["name"], c["method"] = name, method
    return c


CASES = [
    _case("vanilla_win", "vanilla", SET_A),
    _case("vanilla_nowin", "vanilla", SET_B, use_windows=False),
    _case("maskclip_win", "maskclip", SET_B),
    _case("maskclip_nowin_pamr", "maskclip", SET_A, use_windows=False, refine="pamr"),
    _case("sclip_win", "sclip", SET_B),
    _case("sclip_nowin", "sclip", SET_A, use_windows=False),
    _case("clearclip_win", "clearclip", SET_A),
    _case("clearclip_nowin_pamr", "clearclip", SET_B, use_windows=False, refine="pamr"),
    _case("naclip_win_pamr", "naclip", SET_B, refine="pamr"),
    _case("naclip_nowin_pamr", "naclip", SET_A, use_windows=False, refine="pamr"),
    _case("naclip_win48", "naclip", SET_A, window=48, stride=24),
    _case("sclip_win48_pamr", "sclip", SET_B, window=48, stride=24, refine="pamr"),
    _case("naclip_imagenet80_pamr", "naclip", SET_B, refine="pamr", templates="imagenet80"),
    # window taller than the rescaled image: crops of min(96, 80) x 96 -> non-square 5x6 grids
    _case("maskclip_win96", "maskclip", SET_B, window=96, stride=48),
    _case("sclip_win_pamr_12names", "sclip", SET_C, refine="pamr"),
]


def make_image(path: str) -> None:
    from PIL import Image
    with Image.open(IMAGE_SOURCE) as im:
        small = im.convert("RGB").crop(IMAGE_CROP).resize(IMAGE_SIZE, Image.BICUBIC)
    small.save(path, format="PNG", optimize=True)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@torch.no_grad()
def run_case(model, rgb, case: dict, query_cache: dict, trim: bool = False) -> tuple:
    """-> (tensors {name: tensor}, resolved case dict, rescaled image [3, Hs, Ws]).
    Query embeddings are shared between cases with the same names and templates (query_cache);
    trim: see seg_reference.encode_texts (same embeddings, faster on the big text tower)."""
    key = (json.dumps(case["classes"]), json.dumps(case["background"]), case["templates"])
    if key not in query_cache:
        query_cache[key] = R.encode_queries(model, case["classes"], case["templates"], case["background"], trim=trim)
    q = query_cache[key]
    thr = case["threshold"]
    r = R.segment(model, rgb, case["classes"], method=case["method"], refine=case["refine"],
                  use_windows=case["use_windows"], short_side=case["short_side"], window=case["window"],
                  stride=case["stride"], templates=case["templates"], background=case["background"],
                  logit_scale=case["logit_scale"], threshold=0.0 if thr == "median" else float(thr),
                  gaussian_std=case["gaussian_std"], queries=q)
    labels = r["labels"]
    if thr == "median":
        thr = round(float(r["scores"].max(dim=0).values.median()), 2)
        labels = R.labels_from_scores(r["scores"], len(q["classes"]), bool(q["background"]), thr)
    resolved = dict(case, threshold=thr, names=r["names"], class_of=r["class_of"], grid=list(r["grid"]),
                    rescaled_hw=list(r["image"].shape[-2:]))
    t = {"queries": r["queries"], "windows": torch.tensor(r["windows"], dtype=torch.int64), "raw": r["raw"],
         "scores": r["scores"], "labels": labels.to(torch.int32)}
    if r["refined"] is not None:
        t["refined"] = r["refined"]
    return t, resolved, r["image"][0]


def summary(t: dict, case: dict) -> dict:
    s = t["scores"]
    top = s.topk(2, dim=0).values
    margin = top[0] - top[1]
    lab = t["labels"]
    return {"windows": int(t["windows"].shape[0]), "small_margin_pixels": int((margin <= 1e-3).sum()), "near_threshold_pixels":
            int(((top[0] - case["threshold"]).abs() <= 1e-3).sum()) if case["threshold"] > 0 else 0,
            "label_counts": {int(k): int((lab == k).sum()) for k in lab.unique()}}


def write_readme(out: str, meta: dict, cases: list, sizes: dict, stats: dict) -> None:
    v = meta["versions"]
    lines = [
        "# one-stage segmentation reference (tiny model)",
        "",
        "`reference.safetensors` holds the outputs of `scripts/reference/seg_reference.py` "
        f"({R.SEG_REFERENCE_VERSION}) on the synthetic **tiny** CLIP (`synth.py` arch `tiny`, seed 0, "
        "not stored: the Swift tests regenerate it bit-for-bit with `Synth`) and `image.png`, for "
        "`Tests/ZeroSegTests/SegmentationGoldenTests.swift`.",
        "",
        "Regenerate (from the repository root, with the pinned `scripts/reference/requirements.txt`):",
        "",
        "```sh",
        "pip install -r scripts/reference/requirements.txt",
        "python scripts/reference/make_seg_fixtures.py            # keeps image.png",
        "python scripts/reference/make_seg_fixtures.py --remake-image   # also rewrites image.png from examples/chelsea.jpg",
        "```",
        "",
        f"Made by `{GENERATOR_NAME}` ({GENERATOR_VERSION}) with `{R.SEG_REFERENCE_NAME}` ({R.SEG_REFERENCE_VERSION}), "
        f"weights by `{synth.GENERATOR_NAME}` ({synth.GENERATOR_VERSION}); python {v['python']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, open_clip_torch {v['open_clip_torch']}, safetensors {v['safetensors']}, "
        f"numpy {v['numpy']}, Pillow {v['pillow']}; float32, attn_implementation=eager, torch threads=2.",
        "",
        f"`image.png`: {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} RGB, `examples/chelsea.jpg` cropped to the PIL box "
        f"{IMAGE_CROP} and resized with Pillow BICUBIC (sha256 `{meta['image']['sha256']}`).",
        "",
        "Tensors are named `<case>.<tensor>`: `queries` [Q, P], `windows` I64 [n, 4] (y1, y2, x1, x2), "
        "`raw` [Q, H, W] (averaged window logits at the original size), `refined` [Q, H, W] (PAMR; only "
        "cases with refine pamr), `scores` [C(+1), H, W] (background row last), `labels` I32 [H, W] "
        "(255 = background or below threshold), `rescaled` [3, Hs, Ws] (first case only). "
        "The `cases` metadata entry is the JSON list of the cases below (thresholds resolved).",
        "",
        "Common settings: short side 80 (48x64 -> 80x107), logit scale 40, Gaussian std 5, PAMR 10 "
        "iterations with dilations 8 and 16. Class sets: A = `cat, dog, grass`; "
        "B = `cat|kitten, tree, sofa|couch` + background `wall, floor`; C = `cat|kitten|tabby, dog, "
        "grass|lawn, tree, sofa|couch, blanket` + background `sky, floor` (12 names); with a background the "
        "threshold is the median winning probability rounded to 2 decimals.",
        "",
        "`SegmentationGoldenTests` runs `Segmenter` on every case and compares each stage: queries "
        "(max abs <= 1e-5), windows (equal), rescaled image (<= 1e-5), raw and refined logits (<= 2e-5), "
        "scores incl. the background row (<= 1e-3, the acceptance), argmax agreement >= 99.9% over pixels "
        "whose reference top-2 margin is above 1e-3 (the acceptance) and the same for labels (pixels also "
        "more than 1e-3 from the threshold). Measured errors: docs/equivalence.md.",
        "",
        "| case | method | windows | refine | templates | classes | background | threshold | reference pixels with top-2 margin <= 1e-3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        n = stats[c["name"]]["windows"]
        win = f"{c['window']}/{c['stride']}: {n} of {c['grid'][0]}x{c['grid'][1]} patches" if c["use_windows"] \
            else f"none: 1 of {c['grid'][0]}x{c['grid'][1]} patches"
        cls = ", ".join("\\|".join(n) for n in c["classes"])  # escaped: inside a markdown table
        lines.append(f"| `{c['name']}` | {c['method']} | {win} | {c['refine']} | {c['templates']} | {cls} | "
                     f"{', '.join(c['background']) or '-'} | {c['threshold']} | {stats[c['name']]['small_margin_pixels']} |")
    lines += ["", f"File sizes: " + ", ".join(f"`{k}` {n} bytes" for k, n in sizes.items()) + "."]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--remake-image", action="store_true", help="rewrite image.png from examples/chelsea.jpg")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    img_path = os.path.join(args.out, "image.png")
    if args.remake_image or not os.path.exists(img_path):
        make_image(img_path)
    rgb = R.load_rgb(img_path)
    assert rgb.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), rgb.shape

    from safetensors.torch import save_file
    import PIL
    with tempfile.TemporaryDirectory(prefix="zeroseg-seg-tiny.") as tmp:
        synth.write_checkpoint("tiny", 0, tmp)
        model = R.load_model(tmp)
        tensors, cases, stats, qc = {}, [], {}, {}
        for i, case in enumerate(CASES):
            t, resolved, rescaled = run_case(model, rgb, case, qc)
            if i == 0:
                t["rescaled"] = rescaled
            for k, v in t.items():
                tensors[f"{case['name']}.{k}"] = v.detach().clone().contiguous()
            cases.append(resolved)
            stats[case["name"]] = summary(t, resolved)
            print(f"{case['name']}: Q {t['queries'].shape[0]}, windows {t['windows'].shape[0]}, "
                  f"grid {resolved['grid']}, threshold {resolved['threshold']}, {stats[case['name']]}", flush=True)
    vers = dump_stages.versions()
    vers["pillow"] = PIL.__version__
    meta = {"generator": {"script": GENERATOR_NAME, "version": GENERATOR_VERSION},
            "reference": {"script": R.SEG_REFERENCE_NAME, "version": R.SEG_REFERENCE_VERSION},
            "versions": vers,
            "model": {"arch": "tiny", "seed": 0, "init": f"{synth.GENERATOR_NAME} ({synth.GENERATOR_VERSION})"},
            "image": {"file": "image.png", "sha256": sha256(img_path), "source": "examples/chelsea.jpg",
                      "crop": list(IMAGE_CROP), "size": list(IMAGE_SIZE), "filter": "PIL BICUBIC"},
            "cases": cases}
    ref_path = os.path.join(args.out, "reference.safetensors")
    save_file(tensors, ref_path, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(ref_path, 0o644)
    sizes = {n: os.path.getsize(os.path.join(args.out, n)) for n in ("image.png", "reference.safetensors")}
    write_readme(args.out, meta, cases, sizes, stats)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v} bytes" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
