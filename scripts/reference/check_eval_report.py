#!/usr/bin/env python3
"""Recomputes a `zeroseg eval` report independently, with mmsegmentation's formula.

Reads the predictions `zeroseg eval --out DIR --save-predictions` saved (DIR/predictions/NAME.png)
and the label PNGs with Pillow (as mmseg's LoadAnnotations does), applies reduce_zero_label as
mmseg does, accumulates mmseg's `intersect_and_union` (torch.histc) over the set and compares
every area and metric with DIR/eval.json.

    python scripts/reference/check_eval_report.py --out /tmp/camvid-eval --labels ../shared/data/camvid/valannot

Settings (ignore index, reduce_zero_label, number of classes) are taken from the report.
"""
import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_eval_fixture import mmseg_intersect_and_union, reduce_zero_label, total_area_to_metrics  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="the --out folder of zeroseg eval (with predictions/)")
    ap.add_argument("--labels", required=True, help="the label folder")
    args = ap.parse_args()
    rep = json.load(open(os.path.join(args.out, "eval.json")))
    s = rep["settings"]
    nc = len(rep["classes"])
    ignore, reduce = s["ignore"], s["reduce_zero_label"]
    pred_dir = os.path.join(args.out, "predictions")
    names = sorted(f for f in os.listdir(pred_dir) if f.endswith(".png") and not f.startswith("."))
    assert len(names) == rep["images"], (len(names), rep["images"])
    totals = [torch.zeros(nc, dtype=torch.float64) for _ in range(4)]
    for n in names:
        pred = np.array(Image.open(os.path.join(pred_dir, n)))
        label = np.array(Image.open(os.path.join(args.labels, n)))
        assert pred.shape == label.shape, n
        if reduce:
            label = reduce_zero_label(label)
        for t, a in zip(totals, mmseg_intersect_and_union(pred, label, nc, ignore)):
            t += a.double()
    ti, tu, tp, tl = (t.numpy() for t in totals)
    iou, acc, aacc = total_area_to_metrics(ti, tu, tp, tl)
    bad = 0
    for i, c in enumerate(rep["classes"]):
        got = (c["intersection"], c["union"], c["predicted"], c["pixels"])
        want = (int(ti[i]), int(tu[i]), int(tp[i]), int(tl[i]))
        if got != want:
            print(f"class {i} {c['name']}: areas {got} != mmseg {want}")
            bad += 1
        for key, ref in (("iou", iou[i]), ("acc", acc[i])):
            v = c[key]
            if (v is None) != bool(np.isnan(ref)) or (v is not None and abs(v - ref) > 1e-12):
                print(f"class {i} {c['name']}: {key} {v} != mmseg {ref}")
                bad += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        ref = {"mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc), "aAcc": aacc}
    for k, r in ref.items():
        v = rep[k]
        if (v is None) != bool(np.isnan(r)) or (v is not None and abs(v - r) > 1e-12):
            print(f"{k}: {v} != mmseg {r}")
            bad += 1
    print(f"{len(names)} images, {nc} classes, ignore {ignore}, reduce_zero_label {reduce}: "
          f"mIoU {ref['mIoU'] * 100:.4f} mAcc {ref['mAcc'] * 100:.4f} aAcc {ref['aAcc'] * 100:.4f} (mmseg formula); "
          + ("report AGREES" if bad == 0 else f"{bad} DIFFERENCES"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
