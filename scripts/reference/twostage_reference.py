#!/usr/bin/env python3
"""Torch reference of zeroseg's two-stage steps given the masks (Sources/ZeroSegSegmentation/TwoStage.swift):
region crops, region embeddings (CLIP image encoder, or mask-pooled dense features), region class
probabilities and the fusion with the one-stage scores of seg_reference.py.

PUBLIC CODE: zsseg.baseline (MendelXu/zsseg.baseline, mask_former/modeling/clip_adapter) crops each
mask's box (expand_ratio), fills the pixels outside the mask with a constant colour, resizes to 224
(bicubic), encodes with CLIP, and ensembles the CLIP class scores with the proposal network's
(geometric mean with lambda for seen/unseen). zeroseg: box grown by `margin` of its size on each
side, outside pixels = CLIP's mean colour, float bilinear resize (align_corners=False, no
antialias), softmax over all names at the model's logit scale (crop) or at the one-stage scale
(pooled), max per class; fusion p = normalise(p_region^l * p_onestage^(1-l)) where the smallest
covering mask decides, the one-stage value elsewhere.

Used by make_twostage_fixtures.py; no CLI of its own.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
import seg_reference as R  # noqa: E402

TWOSTAGE_REFERENCE_NAME = "scripts/reference/twostage_reference.py"
TWOSTAGE_REFERENCE_VERSION = "zeroseg-twostage-reference-1"


def grown_box(mask: np.ndarray, margin: float) -> tuple:
    """(y0, y1, x0, x1) end-exclusive: the mask's box grown by round(margin * size) on each side, clipped."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    H, W = mask.shape
    # Swift: Int((Double(w) * margin).rounded()) -- rounds half away from zero
    my = int(np.floor((y1 - y0) * margin + 0.5))
    mx = int(np.floor((x1 - x0) * margin + 0.5))
    return max(0, y0 - my), min(H, y1 + my), max(0, x0 - mx), min(W, x1 + mx)


def region_crops(rgb_hwc: np.ndarray, masks: np.ndarray, size: int, margin: float) -> torch.Tensor:
    """float32 HWC 0..255 image, bool [M, H, W] masks -> [M, 3, size, size] normalised crops."""
    img = torch.from_numpy(np.ascontiguousarray(rgb_hwc, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(R.CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(R.CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    out = []
    for m in masks:
        y0, y1, x0, x1 = grown_box(m, margin)
        mm = torch.from_numpy(m[y0:y1, x0:x1].copy())
        crop = torch.where(mm[None], img[:, y0:y1, x0:x1], (mean * 255).expand(3, y1 - y0, x1 - x0))
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]
        out.append((crop / 255.0 - mean) / std)
    return torch.stack(out, 0)


@torch.no_grad()
def image_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    """visual_projection(post_layernorm(class token)) for [N, 3, S, S], L2-normalised."""
    vm = model.vision_model
    pooled = vm(pixel_values=pixels, return_dict=True).pooler_output
    e = model.visual_projection(pooled)
    return e / e.norm(dim=-1, keepdim=True)


@torch.no_grad()
def feature_grid(model, img: torch.Tensor, method: str, crop: int, stride: int, use_windows: bool = True,
                 gaussian_std: float = 5.0) -> torch.Tensor:
    """[fgh, fgw, P] L2-normalised: the windows' dense patch embeddings averaged on the rescaled image's
    patch grid (fgh = Hs // p, fgw = Ws // p); a patch counts for the cell holding its centre
    (min(fgh - 1, (y1 + py * p + p // 2) // p), likewise for x)."""
    _, _, H, W = img.shape
    p = model.config.vision_config.patch_size
    boxes = R.window_boxes(H, W, crop, stride) if use_windows else [(0, H, 0, W)]
    fgh, fgw = max(1, H // p), max(1, W // p)
    P = model.config.projection_dim
    acc = torch.zeros(fgh, fgw, P, dtype=torch.float64)
    for (y1, y2, x1, x2) in boxes:
        emb = R.dense_patch_embeddings(model, img[:, :, y1:y2, x1:x2], method, gaussian_std)[0]
        gh, gw = (y2 - y1) // p, (x2 - x1) // p
        for py in range(gh):
            for px in range(gw):
                cy = min(fgh - 1, (y1 + py * p + p // 2) // p)
                cx = min(fgw - 1, (x1 + px * p + p // 2) // p)
                acc[cy, cx] += emb[py * gw + px].double()
    n = acc.norm(dim=-1, keepdim=True)
    acc = torch.where(n > 0, acc / n.clamp_min(1e-300), acc)
    return acc.float()


def pooled_embeddings(grid: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """[M, P]: L2-normalised area-weighted mean of the grid cells under each mask (pixel (y, x) ->
    cell (min(gh-1, y*gh//H), min(gw-1, x*gw//W)))."""
    gh, gw, P = grid.shape
    H, W = masks.shape[1:]
    rows = np.minimum(gh - 1, np.arange(H) * gh // H)
    cols = np.minimum(gw - 1, np.arange(W) * gw // W)
    cell = torch.from_numpy((rows[:, None] * gw + cols[None, :]).reshape(-1))
    flat = grid.reshape(gh * gw, P).double()
    out = []
    for m in masks:
        idx = cell[torch.from_numpy(m.reshape(-1))]
        v = flat[idx].sum(0)
        out.append(v / v.norm())
    return torch.stack(out, 0).float()


def region_probabilities(emb: torch.Tensor, queries: torch.Tensor, class_of, rows: int, scale: float) -> torch.Tensor:
    """[M, rows]: softmax over names of scale * cos, max over each class's names."""
    probs = F.softmax(emb @ queries.T * scale, dim=1)
    idx = torch.tensor(class_of)
    return torch.stack([probs[:, idx == c].max(dim=1).values for c in range(rows)], 1)


def fuse(onestage: torch.Tensor, masks: np.ndarray, region: torch.Tensor, lam: float) -> tuple:
    """onestage [R, H, W], masks bool [M, H, W], region [M, R] -> (fused [R, H, W], owner int32 [H, W]).
    The smallest covering mask decides a pixel (equal areas: the lower index); -1 = no mask."""
    M = masks.shape[0]
    areas = masks.reshape(M, -1).sum(1)
    owner = np.full(masks.shape[1:], -1, dtype=np.int32)
    order = sorted(range(M), key=lambda i: (-int(areas[i]), -i))
    for i in order:
        owner[masks[i]] = i
    fused = onestage.clone()
    own = torch.from_numpy(owner)
    for i in range(M):
        sel = own == i
        if not bool(sel.any()):
            continue
        p1 = onestage[:, sel]                       # [R, n]
        v = region[i][:, None].pow(lam) * p1.pow(1 - lam)
        s = v.sum(0, keepdim=True)
        fused[:, sel] = torch.where(s > 0, v / s, p1)
    return fused, own
