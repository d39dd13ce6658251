#!/usr/bin/env python3
"""Reference fixtures for `zeroseg eval` (Tests/ZeroSegTests/EvalTests.swift, WritersTests.swift).

Writes into Tests/ZeroSegTests/Fixtures/eval/ (or --out):

* metrics.json: seeded random prediction/label maps and the metrics mmsegmentation's IoUMetric
  gives for them. The metric is written out here independently of zeroseg, twice:
    - `mmseg_intersect_and_union`: mmseg 1.x's `IoUMetric.intersect_and_union` (torch.histc
      over 0...C-1 after masking `label != ignore_index`), with `LoadAnnotations`'
      reduce_zero_label (0 -> 255, v -> v - 1, 254 -> 255) applied to the label first;
      `total_area_to_metrics` on the summed areas (IoU = I/U, Acc = I/label area, aAcc =
      sum I / sum label area; means with np.nanmean).
    - `numpy_areas`: the same areas from a numpy confusion matrix (np.bincount), checked equal.
  NaN (0/0) is stored as null.
* labels/*.png: small label maps written by Pillow in the modes mmseg meets (8-bit "L", "P"
  with 8-bit and 4-bit indices, "1"), with the values `np.array(Image.open(p))` gives
  (mmseg reads labels with Pillow, flag 'unchanged') in labels.json; plus files zeroseg must
  refuse (RGB, 16-bit grey, grey+alpha).
* npy/*.npy: float32 arrays saved by numpy.save (format 1.0), for byte-exact comparison with
  zeroseg's writeNpy; values = (arange(n) * 0.5 - 1.25) reshaped.

Run from the repository root: python scripts/reference/make_eval_fixture.py
Needs numpy, torch and Pillow (versions are recorded in metrics.json).
"""
import argparse
import json
import os
import warnings

import numpy as np
import PIL
import torch
from PIL import Image


# ---------------------------------------------------------------- metric (mmseg, independent)

def reduce_zero_label(label):
    """mmseg LoadAnnotations(reduce_zero_label=True) on a uint8 label map."""
    label = label.astype(np.uint8).copy()
    label[label == 0] = 255
    label = label - 1            # uint8: 255 - 1 = 254
    label[label == 254] = 255
    return label


def mmseg_intersect_and_union(pred, label, num_classes, ignore_index):
    """mmseg 1.x IoUMetric.intersect_and_union, verbatim in torch."""
    pred = torch.from_numpy(pred.astype(np.int64))
    label = torch.from_numpy(label.astype(np.int64))
    mask = label != ignore_index
    pred = pred[mask]
    label = label[mask]
    intersect = pred[pred == label]
    area_intersect = torch.histc(intersect.float(), bins=num_classes, min=0, max=num_classes - 1).cpu()
    area_pred_label = torch.histc(pred.float(), bins=num_classes, min=0, max=num_classes - 1).cpu()
    area_label = torch.histc(label.float(), bins=num_classes, min=0, max=num_classes - 1).cpu()
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def numpy_areas(pred, label, num_classes, ignore_index):
    """The same four areas from a confusion matrix (rows: label, columns: prediction)."""
    keep = label.astype(np.int64) != ignore_index
    l = label.astype(np.int64)[keep]
    p = pred.astype(np.int64)[keep]
    valid = (l >= 0) & (l < num_classes)
    l, p = l[valid], p[valid]
    p_in = (p >= 0) & (p < num_classes)
    cm = np.bincount(l[p_in] * num_classes + p[p_in], minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = np.diag(cm)
    area_label = np.bincount(l, minlength=num_classes)
    area_pred = cm.sum(axis=0)  # predictions outside 0...C-1 are dropped as torch.histc drops them
    # ...but predictions of in-range classes on pixels whose label is out of range also count
    # in mmseg (histc of pred is taken before any label range check): add them.
    l_all = label.astype(np.int64)[keep]
    p_all = pred.astype(np.int64)[keep]
    out = (l_all < 0) | (l_all >= num_classes)
    area_pred = area_pred + np.bincount(p_all[out & (p_all >= 0) & (p_all < num_classes)], minlength=num_classes)
    return inter, area_label + area_pred - inter, area_pred, area_label


def total_area_to_metrics(ti, tu, tp, tl):
    """mmseg IoUMetric.total_area_to_metrics (fractions, not percentages)."""
    ti, tu, tp, tl = (np.asarray(x, dtype=np.float64) for x in (ti, tu, tp, tl))
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = ti / tu
        acc = ti / tl
        aacc = ti.sum() / tl.sum()
    return iou, acc, aacc


def nan_to_none(xs):
    return [None if np.isnan(x) else float(x) for x in xs]


def case(name, rng, num_classes, ignore_index, reduce, shapes, ignore_frac=0.1, bg_frac=0.05,
         absent=(), never_predicted=(), label_values=None):
    images = []
    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for (h, w) in shapes:
        if label_values is None:
            lab = rng.integers(0, num_classes, size=(h, w))
        else:
            lab = rng.choice(label_values, size=(h, w))
        pred = lab.copy()  # 55% agreement, so IoUs are not all tiny
        flip = rng.random((h, w)) < 0.45
        pred[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
        pred[rng.random((h, w)) < bg_frac] = 255
        for c in never_predicted:
            pred[pred == c] = (c + 1) % num_classes
        raw = lab.astype(np.int64)
        if reduce:
            # stored values: class c is stored as c + 1, 0 = "other" (ignored), 255 stays 255.
            stored = raw + 1
            for c in absent:
                stored[stored == c + 1] = 1 + (c + 1) % num_classes
            stored[rng.random((h, w)) < ignore_frac] = 0
            stored[rng.random((h, w)) < 0.02] = 255
            label_stored = stored.astype(np.uint8)
            label_eval = reduce_zero_label(label_stored)
        else:
            stored = raw.copy()
            for c in absent:
                stored[stored == c] = (c + 1) % num_classes
            stored[rng.random((h, w)) < ignore_frac] = ignore_index
            label_stored = stored.astype(np.uint8)
            label_eval = label_stored
        pred = pred.astype(np.uint8)
        ai, au, ap, al = mmseg_intersect_and_union(pred, label_eval, num_classes, ignore_index)
        ni, nu, np_, nl = numpy_areas(pred, label_eval, num_classes, ignore_index)
        for a, b in zip((ai, au, ap, al), (ni, nu, np_, nl)):
            assert np.array_equal(a.numpy().astype(np.int64), np.asarray(b, dtype=np.int64)), name
        for t, a in zip(totals, (ai, au, ap, al)):
            t += a.double()
        images.append({"height": h, "width": w,
                       "prediction": pred.reshape(-1).tolist(),
                       "label": label_stored.reshape(-1).tolist()})
    ti, tu, tp, tl = (t.numpy() for t in totals)
    iou, acc, aacc = total_area_to_metrics(ti, tu, tp, tl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        miou = np.nanmean(iou)
        macc = np.nanmean(acc)
    return {
        "name": name, "num_classes": num_classes, "ignore_index": ignore_index, "reduce_zero_label": reduce,
        "images": images,
        "expected": {
            "area_intersect": [int(x) for x in ti], "area_union": [int(x) for x in tu],
            "area_pred_label": [int(x) for x in tp], "area_label": [int(x) for x in tl],
            "IoU": nan_to_none(iou), "Acc": nan_to_none(acc),
            "mIoU": None if np.isnan(miou) else float(miou), "mAcc": None if np.isnan(macc) else float(macc),
            "aAcc": None if np.isnan(aacc) else float(aacc),
        },
    }


# ---------------------------------------------------------------- label PNGs (Pillow)

def label_pngs(out):
    d = os.path.join(out, "labels")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    entries = []

    def add(name, img, ok, note):
        path = os.path.join(d, name)
        img.save(path)
        back = Image.open(path)
        e = {"file": name, "mode": back.mode, "ok": ok, "note": note}
        if ok:
            a = np.array(back)  # what mmseg's LoadAnnotations (pillow, 'unchanged') gets
            if a.dtype == bool:  # mode "1"
                a = a.astype(np.uint8)
            assert a.dtype == np.uint8 and a.ndim == 2, name
            e.update(height=int(a.shape[0]), width=int(a.shape[1]), values=a.reshape(-1).tolist())
        entries.append(e)

    v = rng.integers(0, 12, size=(7, 9)).astype(np.uint8)
    v[0, 0] = 255
    v[1, 1] = 11
    add("gray8.png", Image.fromarray(v, mode="L"), True, "8-bit greyscale, values as stored")

    p = Image.fromarray(rng.integers(0, 200, size=(6, 10)).astype(np.uint8), mode="P")
    p.putpalette([(i * 37) % 256 for i in range(768)])
    add("palette8.png", p, True, "palette, 8-bit indices: the indices, not the colours")

    q = Image.fromarray(rng.integers(0, 16, size=(5, 11)).astype(np.uint8), mode="P")
    q.putpalette([(i * 53) % 256 for i in range(48)])
    path4 = "palette4.png"
    q.save(os.path.join(d, path4), bits=4)
    back = Image.open(os.path.join(d, path4))
    a = np.array(back)
    entries.append({"file": path4, "mode": back.mode, "ok": True, "note": "palette, 4-bit indices (Pillow bits=4)",
                    "height": int(a.shape[0]), "width": int(a.shape[1]), "values": a.reshape(-1).tolist()})

    b = Image.fromarray(rng.integers(0, 2, size=(4, 13)).astype(bool))
    add("mode1.png", b, True, "1-bit greyscale (Pillow mode '1'); np.array gives booleans, stored here as 0/1")

    add("rgb.png", Image.fromarray(rng.integers(0, 255, size=(4, 4, 3)).astype(np.uint8), mode="RGB"), False,
        "RGB: not a label map")
    add("gray16.png", Image.fromarray(rng.integers(0, 300, size=(4, 4)).astype(np.uint16)), False,
        "16-bit greyscale: refused")
    add("graya.png", Image.fromarray(rng.integers(0, 255, size=(4, 4, 2)).astype(np.uint8), mode="LA"), False,
        "greyscale + alpha: refused")
    with open(os.path.join(out, "labels.json"), "w") as f:
        json.dump(entries, f)
        f.write("\n")


# ---------------------------------------------------------------- .npy (numpy.save)

def npys(out):
    d = os.path.join(out, "npy")
    os.makedirs(d, exist_ok=True)
    shapes = {"f32_0d": (), "f32_5": (5,), "f32_2x3": (2, 3), "f32_1x2x3x4": (1, 2, 3, 4), "f32_0x3": (0, 3),
              "f32_12345x0": (12345, 0), "f32_3x1000000x0": (3, 1000000, 0),
              # magic + length + dict + "\n" is exactly 128 bytes: numpy then pads with a further
              # 64 bytes (padlen = 64 - 0), not 0.
              "f32_pad64": (1, 1, 100, 1000, 1000, 1000, 1000, 1000, 0)}
    for name, shape in shapes.items():
        n = int(np.prod(shape)) if shape else 1
        a = (np.arange(n, dtype=np.float32) * 0.5 - 1.25).reshape(shape)
        np.save(os.path.join(d, name + ".npy"), a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="Tests/ZeroSegTests/Fixtures/eval")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20240611)
    cases = [
        case("three classes, ignore 255", rng, 3, 255, False, [(5, 7), (3, 4)]),
        case("camvid-like: 11 classes, ignore 11, class 6 absent, class 9 never predicted", rng, 11, 11, False,
             [(9, 13), (8, 8), (4, 17)], absent=(6,), never_predicted=(9,)),
        case("ade-like: reduce_zero_label, 20 classes, classes 3 and 17 absent, 17 never predicted (empty union)",
             rng, 20, 255, True, [(10, 10), (7, 12)], ignore_frac=0.2, absent=(3, 17), never_predicted=(17,)),
        case("many background predictions", rng, 5, 255, False, [(6, 6)], bg_frac=0.5),
        case("reduce_zero_label, only 'other' and class 0", rng, 4, 255, True, [(6, 8)], ignore_frac=0.6,
             label_values=[0]),
    ]
    meta = {"generator": "scripts/reference/make_eval_fixture.py",
            "versions": {"numpy": np.__version__, "torch": torch.__version__, "Pillow": PIL.__version__},
            "metric": "mmseg 1.x IoUMetric (intersect_and_union + total_area_to_metrics), as fractions; NaN -> null"}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    label_pngs(args.out)
    npys(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
