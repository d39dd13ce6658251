#!/usr/bin/env python3
"""Full-size equivalence check of one-stage segmentation: zeroseg (Swift) vs seg_reference.py (PyTorch)
on a random ViT-B/16 (synth.py, seed 0) and examples/chelsea.jpg. Not run in CI.

Steps:
1. write the synthetic ViT-B/16 (synth.py --arch vit-b-16 --seed 0; bit-identical to
   `zeroseg weights synth --arch vit-b-16 --seed 0`) into OUT/model (kept if already there);
2. run the torch reference for every case of CASES (each method with and without windows, PAMR,
   synonyms + background + threshold, imagenet80 templates) -> OUT/reference.safetensors;
3. write OUT/job.json and run the Swift half:
       ZEROSEG_SEG_FULLSIZE=OUT/job.json swift test -c release --scratch-path SCRATCH \\
           --filter fullSizeFromEnvironment
   (SegmentationGoldenTests.fullSizeFromEnvironment writes OUT/swift.safetensors);
4. compare per case: max |diff| of class embeddings, raw and refined logits and scores; argmax
   agreement over the pixels whose reference top-2 margin is above 1e-3; label agreement (same
   pixels, also more than 1e-3 from the threshold). Prints a markdown table (also OUT/report.md,
   OUT/report.json). The same for `Segmenter.segment(...)` (the CLI's path: class scores and
   labels). Exit status 1 if a case misses the acceptance (scores max |diff| <= 1e-3, argmax and
   label agreement >= 99.9%).

CLI:  python scripts/reference/seg_fullsize_check.py [--out /tmp/zeroseg-segfull] [--image examples/chelsea.jpg]
          [--scratch-path .build-seg] [--swift-out FILE (skip step 3, compare this file)] [--threads 2]
          [--cases NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import make_seg_fixtures as MF  # noqa: E402
import seg_reference as R  # noqa: E402
import synth  # noqa: E402

DEFAULT_OUT = "/tmp/zeroseg-segfull"
SCORE_TOL = 1e-3       # acceptance
MIN_AGREEMENT = 0.999  # acceptance
MARGIN = 1e-3          # acceptance: pixels with reference top-2 margin <= this are not counted

S1 = {"classes": [["cat"], ["grass", "lawn"], ["sofa"], ["blanket"]], "background": [], "threshold": 0.0}
S2 = {"classes": [["cat", "kitten"], ["sofa", "couch"], ["blanket"]], "background": ["wall", "floor"],
      "threshold": "median"}
S3 = {"classes": [["cat", "kitten", "tabby"], ["dog"], ["grass", "lawn"], ["tree"], ["sofa", "couch"], ["blanket"]],
      "background": ["sky", "floor"], "threshold": "median"}  # 12 names: more than segment()'s chunk of 8
BASE = {"short_side": 336, "window": 224, "stride": 112, "use_windows": True, "refine": "none",
        "templates": "imagenet80", "logit_scale": 40.0, "gaussian_std": 5.0}


def _case(name, method, sets, **kw):
    c = dict(BASE)
    c.update(sets)
    c.update(kw)
    c["name"], c["method"] = name, method
    return c


CASES = [
    _case("vanilla_win", "vanilla", S1),
    _case("maskclip_win", "maskclip", S1),
    _case("sclip_win", "sclip", S1),
    _case("clearclip_win", "clearclip", S1),
    _case("naclip_win_pamr", "naclip", S1, refine="pamr"),
    _case("vanilla_nowin", "vanilla", S1, use_windows=False),
    _case("maskclip_nowin", "maskclip", S1, use_windows=False),
    _case("sclip_nowin_pamr", "sclip", S1, use_windows=False, refine="pamr"),
    _case("clearclip_nowin", "clearclip", S1, use_windows=False),
    _case("naclip_nowin_pamr", "naclip", S1, use_windows=False, refine="pamr"),
    _case("sclip_win_bg", "sclip", S2),
    _case("naclip_win_pamr_bg", "naclip", S2, refine="pamr"),
    _case("clearclip_win_pamr_12names", "clearclip", S3, refine="pamr"),
]


def top_two(s: torch.Tensor):
    """[R, H, W] (R >= 2) -> first-maximum row, top-1 value, top-1 minus top-2."""
    v = s.topk(2, dim=0).values
    return s.argmax(dim=0), v[0], v[0] - v[1]


def compare(ref: dict, sw: dict, case: dict) -> dict:
    def d(a, b):
        assert a.shape == b.shape, (a.shape, b.shape)
        return float((a.double() - b.double()).abs().max())
    out = {"queries": d(ref["queries"], sw["queries"]), "raw": d(ref["raw"], sw["raw"]),
           "refined": d(ref["refined"], sw["refined"]) if "refined" in ref else None,
           "scores": d(ref["scores"], sw["scores"]),
           "windows_equal": bool(torch.equal(ref["windows"].to(torch.int64), sw["windows"].to(torch.int64)))}
    ra, rb, rm = top_two(ref["scores"])
    sa, _, _ = top_two(sw["scores"])
    counted = rm > MARGIN
    out["argmax_counted"] = int(counted.sum())
    out["argmax_agree"] = int((counted & (ra == sa)).sum())
    lab_counted = counted.clone()
    if case["threshold"] > 0:
        lab_counted &= (rb - case["threshold"]).abs() > MARGIN
    rl, sl = ref["labels"].to(torch.int64), sw["labels"].to(torch.int64)
    out["labels_counted"] = int(lab_counted.sum())
    out["labels_agree"] = int((lab_counted & (rl == sl)).sum())
    out["labels_exact"] = int((rl == sl).sum())
    out["pixels"] = int(rl.numel())
    out["argmax_agreement"] = out["argmax_agree"] / max(1, out["argmax_counted"])
    out["label_agreement"] = out["labels_agree"] / max(1, out["labels_counted"])
    # segment(...) (the CLI's streamed path): class rows of the scores, labels
    nc = len(case["classes"])
    out["segment_scores"] = d(ref["scores"][:nc], sw["segment_scores"])
    ssl = sw["segment_labels"].to(torch.int64)
    out["segment_labels_agree"] = int((lab_counted & (rl == ssl)).sum())
    out["segment_labels_exact"] = int((rl == ssl).sum())
    out["segment_label_agreement"] = out["segment_labels_agree"] / max(1, out["labels_counted"])
    out["ok"] = (out["scores"] <= SCORE_TOL and out["argmax_agreement"] >= MIN_AGREEMENT
                 and out["label_agreement"] >= MIN_AGREEMENT and out["windows_equal"]
                 and out["segment_scores"] <= SCORE_TOL and out["segment_label_agreement"] >= MIN_AGREEMENT)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--image", default=os.path.join(ROOT, "examples", "chelsea.jpg"))
    ap.add_argument("--arch", default="vit-b-16", choices=["vit-b-16", "vit-b-32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scratch-path", default=os.path.join(ROOT, ".build-seg"))
    ap.add_argument("--swift-out", help="compare this Swift output file instead of running swift test")
    ap.add_argument("--cases", nargs="*", help="only these cases")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    cases = [c for c in CASES if not args.cases or c["name"] in args.cases]

    model_dir = os.path.join(out, "model")
    info_path = os.path.join(model_dir, "synth_info.json")
    ok_model = False
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        ok_model = info.get("arch") == args.arch and info.get("seed") == args.seed \
            and info.get("generator_version") == synth.GENERATOR_VERSION
    if not ok_model:
        t0 = time.time()
        synth.write_checkpoint(args.arch, args.seed, model_dir, verify=False)
        print(f"[model] {args.arch} seed {args.seed} -> {model_dir} ({time.time() - t0:.1f}s)", flush=True)

    # 2. reference
    from safetensors.torch import save_file, load_file
    model = R.load_model(model_dir)
    rgb = R.load_rgb(args.image)
    ref, resolved, qc, ref_time = {}, [], {}, {}
    for c in cases:
        t0 = time.time()
        t, rc, _ = MF.run_case(model, rgb, c, qc, trim=True)
        ref_time[c["name"]] = time.time() - t0
        ref[c["name"]] = t
        resolved.append(rc)
        print(f"[reference] {c['name']}: {len(t['windows'])} windows, grid {rc['grid']}, threshold {rc['threshold']}, "
              f"{ref_time[c['name']]:.1f}s", flush=True)
    save_file({f"{n}.{k}": v.detach().clone().contiguous() for n, t in ref.items() for k, v in t.items()},
              os.path.join(out, "reference.safetensors"),
              metadata={"cases": json.dumps(resolved), "versions": json.dumps(dump_stages.versions())})

    # 3. Swift
    swift_out = args.swift_out or os.path.join(out, "swift.safetensors")
    swift_wall = None
    if not args.swift_out:
        job = {"model": model_dir, "image": os.path.abspath(args.image), "out": swift_out, "threads": args.threads,
               "cases": resolved}
        job_path = os.path.join(out, "job.json")
        with open(job_path, "w") as f:
            json.dump(job, f, indent=1)
        if os.path.exists(swift_out):
            os.remove(swift_out)
        cmd = ["swift", "test", "-c", "release", "--scratch-path", args.scratch_path, "--filter", "fullSizeFromEnvironment"]
        env = dict(os.environ, ZEROSEG_SEG_FULLSIZE=job_path, HF_HUB_OFFLINE="1")
        print("[swift] " + " ".join(cmd), flush=True)
        t0 = time.time()
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        swift_wall = time.time() - t0
        if p.returncode != 0 or not os.path.exists(swift_out):
            print(p.stdout[-4000:], p.stderr[-4000:], sep="\n")
            print("swift test failed", file=sys.stderr)
            return 2
        for line in p.stdout.splitlines():
            if "seg-fullsize" in line:
                print("  " + line.strip())
    swt = load_file(swift_out)
    from safetensors import safe_open
    with safe_open(swift_out, "pt") as f:
        sw_meta = f.metadata() or {}

    # 4. compare
    rows, report = [], {}
    for c in resolved:
        n = c["name"]
        sw = {k.split(".", 1)[1]: v for k, v in swt.items() if k.split(".", 1)[0] == n}
        r = compare(ref[n], sw, c)
        report[n] = dict(r, case=c)
        win = f"{c['window']}/{c['stride']}" if c["use_windows"] else "none"
        refined = "-" if r["refined"] is None else f"{r['refined']:.2e}"
        rows.append(f"| `{n}` | {c['method']} | {win} ({len(ref[n]['windows'])}, {c['grid'][0]}x{c['grid'][1]}) | {c['refine']} | "
                    f"{len(c['names'])} / {c['threshold']} | {r['queries']:.2e} | {r['raw']:.2e} | "
                    f"{refined} | "
                    f"{r['scores']:.2e} | {r['argmax_agree']}/{r['argmax_counted']} ({100 * r['argmax_agreement']:.3f}%) | "
                    f"{r['labels_agree']}/{r['labels_counted']} | {r['labels_exact']}/{r['pixels']} | "
                    f"{r['segment_scores']:.2e} | {r['segment_labels_exact']}/{r['pixels']} | {'ok' if r['ok'] else 'FAIL'} |")
    head = ["| case | method | windows (n, grid) | refine | queries / threshold | queries max abs | raw logits max abs | "
            "refined max abs | scores max abs | argmax agreement (margin > 1e-3) | labels agree (counted) | labels equal (all) | "
            "segment() scores max abs | segment() labels equal (all) | |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    v = dump_stages.versions()
    foot = [f"", f"Image {os.path.basename(args.image)} {rgb.shape[1]}x{rgb.shape[0]} -> rescaled "
            f"{resolved[0]['rescaled_hw'][1]}x{resolved[0]['rescaled_hw'][0]}; {args.arch} seed {args.seed} (synth.py); "
            f"torch {v['torch']}, transformers {v['transformers']}, open_clip_torch {v['open_clip_torch']}; "
            f"threads {args.threads}; Swift timings per case (s): {sw_meta.get('timings', '?')}"
            + (f"; swift test wall {swift_wall:.0f}s" if swift_wall else "")]
    table = "\n".join(head + rows + foot)
    print(table)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"cases": report, "reference_seconds": ref_time, "swift_meta": sw_meta}, f, indent=1)
    bad = [n for n, r in report.items() if not r["ok"]]
    if bad:
        print(f"FAILED: {bad}", file=sys.stderr)
        return 1
    print(f"all {len(report)} cases within the acceptance (scores max |diff| <= {SCORE_TOL}, "
          f"argmax agreement >= {100 * MIN_AGREEMENT}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
