#!/usr/bin/env python3
"""PyTorch reference of zeroseg's one-stage (training-free) segmentation pipeline.

Built on transformers' CLIPModel (float32, eval, attn_implementation="eager"). Everything here
follows zeroseg's SPEC; where the public repositories (sinahmr/NACLIP, wangf3014/SCLIP,
mc-lan/ClearCLIP, chongzhou96/MaskCLIP) do something else, the difference is written next to the
code in a "PUBLIC CODE:" comment.

Pipeline (function `segment`):

1. Dense last block (`method`), applied to the LAST vision encoder layer only (`dense_patch_embeddings`):
   with h = layer_norm1(x), q, k, v = q_proj(h), k_proj(h), v_proj(h) split into heads
   (head_dim d, scale = d**-0.5) and a = out_proj(concat_heads(A v)):
     vanilla   : the unchanged CLIP layer, A = softmax(q k^T scale); x = x + a; x = x + mlp(ln2(x))
     maskclip  : A = identity (a = out_proj(v));                       x = x + a; x = x + mlp(ln2(x))
     sclip     : A = softmax(q q^T scale) + softmax(k k^T scale);      x = x + a; x = x + mlp(ln2(x))
     clearclip : A = softmax(q q^T scale);                             x = a
     naclip    : A = softmax(k k^T scale + Omega);                     x = a
   Omega[p, q] = exp(-((r_p - r_q)^2 + (c_p - c_q)^2) / (2 sigma^2)) between patch tokens
   (grid rows/cols r, c), 0 in the class token's row and column (`naclip_omega`).
   Then post_layernorm + visual_projection on every token, drop the class token, L2-normalise.
   Position embeddings for other grids: transformers' interpolate_pos_encoding (bicubic,
   size=(gh, gw), align_corners=False).
2. Class embeddings (`encode_queries`): per name, every template through open_clip.tokenize and the
   text tower, text_projection(pooled), each L2-normalised, mean over templates, re-normalised.
   Query order: classes in order, names of a class in order ("grass|lawn" -> grass, lawn), then the
   background names (one extra class, last).
3. Image (`load_rgb`, `preprocess`): PIL convert("RGB") -> float32 HWC 0..255; mmcv imrescale size
   to (2048, S); torch bilinear resize (align_corners=False, antialias=False) of the float image;
   (x/255 - mean)/std with CLIP's mean/std.
4. Sliding windows (`window_boxes`, `slide_logits`) as SCLIP/NACLIP forward_slide, or one pass
   (`no_window`); per window cosine logits [Q, gh, gw] bilinearly upsampled to the crop, summed,
   divided by the count, then bilinearly resized to the original image size.
5. Refinement `pamr` (`pamr`): NACLIP's pamr.py (10 iterations, dilations 8 and 16) on the averaged
   logits at the original size, guide = normalised rescaled image bilinearly resized to the original
   size. `none`: skip.
6. Scores: softmax over all Q names of logit_scale * logits, max over the names of each class
   (and background) -> [C(+1), H, W]; label = argmax (first maximum), 255 where the background
   wins or where the winning value < threshold.

CLI:
    python scripts/reference/seg_reference.py --model DIR --image IMG --classes "cat,grass|lawn"
        [--background "sky,floor"] [--method naclip] [--refine pamr] [--no-window]
        [--short-side 336] [--window 224] [--stride 112] [--templates imagenet80]
        [--logit-scale 40] [--threshold 0] [--out FILE.safetensors]
    python scripts/reference/seg_reference.py --self-check [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SEG_REFERENCE_NAME = "scripts/reference/seg_reference.py"
SEG_REFERENCE_VERSION = "zeroseg-seg-reference-1"

METHODS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")
REFINEMENTS = ("pamr", "none")
CONTEXT_LENGTH = 77
EOT = 49407

# CLIP's normalisation (0..1 scale).
# PUBLIC CODE: SCLIP/NACLIP/ClearCLIP normalise in mmseg's SegDataPreProcessor on the 0..255 scale with
# rounded constants mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323]
# (= 255 * these values to 3 decimals; relative difference < 1e-5).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The 80 OpenAI ImageNet templates, in this order. Copied from wangf3014/SCLIP
# prompts/imagenet_template.py `openai_imagenet_template` (NACLIP's naclip.py imports the same
# `prompts.imagenet_template.openai_imagenet_template`); `check_templates` asserts that they are the
# same strings, in the same order, as open_clip's OPENAI_IMAGENET_TEMPLATES.
IMAGENET80 = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
TEMPLATE_SETS = {"imagenet80": IMAGENET80, "single": ("a photo of a {}.",)}


def check_templates() -> None:
    """IMAGENET80 == open_clip's OPENAI_IMAGENET_TEMPLATES (same strings, same order)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    theirs = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert len(IMAGENET80) == 80 and len(set(IMAGENET80)) == 80
    assert theirs == IMAGENET80, [(a, b) for a, b in zip(theirs, IMAGENET80) if a != b]


def fill_template(template: str, name: str) -> str:
    """Python f-string semantics of the public lambdas (lambda c: f'a photo of a {c}.')."""
    pre, post = template.split("{}")
    return pre + name + post


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def load_model(model_dir: str):
    """transformers CLIPModel, float32, eval, eager attention; fails on any loading irregularity."""
    from transformers import CLIPModel
    model, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True, dtype=torch.float32,
                                            attn_implementation="eager")
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise AssertionError(f"loading info not clean: {bad}")
    return model.eval()


def parse_classes(spec) -> list:
    """"cat,grass|lawn" or ["cat", "grass|lawn"] -> [["cat"], ["grass", "lawn"]]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for it in items:
        names = [n.strip() for n in (it.split("|") if isinstance(it, str) else it)]
        names = [n for n in names if n]
        assert names, f"empty class in {spec!r}"
        out.append(names)
    return out


@torch.no_grad()
def encode_texts(model, texts: list, batch: int = 256, trim: bool = False) -> torch.Tensor:
    """text_projection(pooled) for each text (not normalised); open_clip.tokenize, 77 tokens, zero padded.

    trim=True cuts each batch after its longest end token: with the causal mask and absolute
    positions the pooled outputs are the same (only the matmul blocking changes)."""
    import open_clip
    ids = open_clip.tokenize(texts, context_length=CONTEXT_LENGTH).to(torch.int64)
    assert bool((ids == EOT).any(dim=1).all())
    out = []
    for i in range(0, ids.shape[0], batch):
        chunk = ids[i:i + batch]
        if trim:
            n = int((chunk == EOT).int().argmax(dim=1).max()) + 1
            chunk = chunk[:, :n]
        pooled = model.text_model(input_ids=chunk, return_dict=True).pooler_output
        out.append(model.text_projection(pooled))
    return torch.cat(out, 0)


@torch.no_grad()
def encode_queries(model, classes, templates="imagenet80", background=None, trim: bool = False) -> dict:
    """Query embeddings [Q, P], one per name (classes' names, then background names).

    PUBLIC CODE: NACLIP/SCLIP read one class per line of a names file, synonyms separated by ", "
    (ClearCLIP: ","), the background words being the FIRST line (class 0); zeroseg uses "|" between
    synonyms and appends the background class LAST."""
    classes = parse_classes(classes)
    background = [b.strip() for b in (background.split(",") if isinstance(background, str) else (background or []))]
    background = [b for b in background if b]
    tpl = TEMPLATE_SETS[templates] if isinstance(templates, str) else tuple(templates)
    names, class_of = [], []
    for ci, ns in enumerate(classes):
        names += ns
        class_of += [ci] * len(ns)
    for b in background:
        names.append(b)
        class_of.append(len(classes))
    assert len(set(names)) == len(names), f"duplicate names: {names}"
    texts = [fill_template(t, n) for n in names for t in tpl]
    f = encode_texts(model, texts, trim=trim).view(len(names), len(tpl), -1)
    f = f / f.norm(dim=-1, keepdim=True)
    f = f.mean(dim=1)
    f = f / f.norm(dim=-1, keepdim=True)
    return {"embeddings": f, "names": names, "class_of": class_of, "classes": classes,
            "background": background, "templates": list(tpl)}


# --------------------------------------------------------------------------
# Dense last block
# --------------------------------------------------------------------------

def naclip_omega(gh: int, gw: int, std: float, cls: bool = True) -> torch.Tensor:
    """[1+gh*gw, 1+gh*gw] (or [gh*gw, gh*gw] with cls=False) Gaussian neighbourhood term, float32.

    Omega[p, q] = exp(-((r_p-r_q)^2 + (c_p-c_q)^2) / (2 std^2)), tokens in row-major patch order,
    0 in the class token's row and column. Computed in float64, rounded once to float32.
    PUBLIC CODE: NACLIP builds it as gaussian_window(2gh-1, 2gw-1) (torch.linspace of offsets times
    1/(std*sqrt 2), squared, exp, in float32) convolved ('same' padding) with one-hot grids
    (get_attention_addition); `omega_by_convolution` re-does that construction and --self-check
    compares the two (max |diff| ~1e-7, float32 rounding only)."""
    r = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
    c = torch.arange(gw, dtype=torch.float64).repeat(gh)
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    om = torch.exp(-d2 / (2.0 * float(std) ** 2)).to(torch.float32)
    if cls:
        om = F.pad(om, (1, 0, 1, 0))
    return om


def omega_by_convolution(gh: int, gw: int, std: float) -> torch.Tensor:
    """The neighbourhood term built the way NACLIP builds it: each patch's one-hot grid convolved
    ('same' padding) with a (2gh-1)x(2gw-1) Gaussian window whose taps are linspace offsets scaled by
    1/(std*sqrt 2), squared and exponentiated in float32; class token row/column = 0."""
    c = 1.0 / (std * math.sqrt(2.0))
    axes = []
    for n in (2 * gh - 1, 2 * gw - 1):
        start = -(n - 1) / 2.0
        axes.append(torch.linspace(start * c, (start + (n - 1)) * c, steps=n, dtype=torch.float32))
    yy, xx = torch.meshgrid(*axes, indexing="ij")
    window = torch.exp(-(yy ** 2 + xx ** 2))
    onehot = torch.eye(gh * gw, dtype=torch.float32).view(gh * gw, 1, gh, gw)
    out = F.conv2d(onehot, window[None, None], padding="same").view(gh * gw, gh * gw)
    return F.pad(out, (1, 0, 1, 0))


def _split_heads(t: torch.Tensor, nh: int) -> torch.Tensor:
    b, n, d = t.shape
    return t.view(b, n, nh, d // nh).transpose(1, 2)  # [B, heads, T, head_dim]


def dense_last_block(layer, x: torch.Tensor, method: str, grid: tuple, gaussian_std: float = 5.0) -> torch.Tensor:
    """The modified last encoder layer. x: [B, 1+gh*gw, D] (its input) -> [B, 1+gh*gw, D].

    PUBLIC CODE, per method:
    - sclip (SCLIP clip/model.py custom_attn csa=True; NACLIP attn_strategy 'csa', arch 'vanilla'):
      same formula, residual + MLP kept.
    - clearclip (ClearCLIP open_clip/transformer.py custom_attn model_type='ClearCLIP',
      ignore_residual=True): same formula; ClearCLIP's own defaults also differ elsewhere
      (logit_scale 50, 448/224 windows, crops zero-padded to a multiple of the patch size, fp16).
    - naclip (NACLIP clip/model.py custom_attn 'naclip', arch 'reduced'): same formula; NACLIP
      multiplies k k^T by the scale AFTER the product (bmm(k, k^T) * scale), as here.
    - maskclip: MaskCLIP's mmseg ViT (return_qkv path of the last layer) computes
      v = out_proj(v_proj(ln1(x))) per token, v += x, v = v + FFN(ln2(v)), i.e. this formula; its
      final norm / projection are the CLIP ln_post and proj. MaskCLIP's optional key smoothing and
      prompt denoising (MaskClipHead.refine_output) are not part of zeroseg.
    - vanilla: transformers' own CLIPEncoderLayer (q k^T * scale, eager softmax)."""
    if method == "vanilla":
        out = layer(x, None)
        return out[0] if isinstance(out, tuple) else out
    attn = layer.self_attn
    nh = attn.num_heads
    hd = attn.head_dim
    scale = hd ** -0.5
    h = layer.layer_norm1(x)
    v = _split_heads(attn.v_proj(h), nh)
    if method == "maskclip":
        o = v
    else:
        q = _split_heads(attn.q_proj(h), nh)
        k = _split_heads(attn.k_proj(h), nh)
        if method == "sclip":
            A = F.softmax(torch.matmul(q, q.transpose(-1, -2)) * scale, dim=-1) + \
                F.softmax(torch.matmul(k, k.transpose(-1, -2)) * scale, dim=-1)
        elif method == "clearclip":
            A = F.softmax(torch.matmul(q, q.transpose(-1, -2)) * scale, dim=-1)
        elif method == "naclip":
            gh, gw = grid
            assert x.shape[1] == 1 + gh * gw, (x.shape, grid)
            om = naclip_omega(gh, gw, gaussian_std).to(x.dtype)
            A = F.softmax(torch.matmul(k, k.transpose(-1, -2)) * scale + om, dim=-1)
        else:
            raise ValueError(f"unknown method {method!r}")
        o = torch.matmul(A, v)
    b, _, t, _ = o.shape
    a = attn.out_proj(o.transpose(1, 2).reshape(b, t, nh * hd))
    if method in ("maskclip", "sclip"):
        x = x + a
        return x + layer.mlp(layer.layer_norm2(x))
    return a  # clearclip, naclip: no residual, no MLP


@torch.no_grad()
def dense_patch_embeddings(model, pixel_values: torch.Tensor, method: str, gaussian_std: float = 5.0) -> torch.Tensor:
    """[B, 3, H, W] normalised pixels -> [B, gh*gw, P] L2-normalised patch embeddings (row-major grid),
    gh = H // patch, gw = W // patch (the patch convolution drops the remainder).

    Position embeddings: transformers' CLIPVisionEmbeddings(interpolate_pos_encoding=True) (bicubic to
    size=(gh, gw), align_corners=False; unchanged when gh = gw = the model's grid).
    PUBLIC CODE: SCLIP/NACLIP/ClearCLIP interpolate with scale_factor=((gh+0.1)/N, (gw+0.1)/N) (bicubic,
    align_corners False, NACLIP: recompute_scale_factor False), which samples at slightly different
    positions than size=(gh, gw); zeroseg follows transformers."""
    vm = model.vision_model
    p = model.config.vision_config.patch_size
    _, _, H, W = pixel_values.shape
    gh, gw = H // p, W // p
    assert gh >= 1 and gw >= 1, f"image {H}x{W} smaller than one patch"
    x = vm.embeddings(pixel_values, interpolate_pos_encoding=True)
    x = vm.pre_layrnorm(x)
    layers = vm.encoder.layers
    for layer in layers[:-1]:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    x = dense_last_block(layers[-1], x, method, (gh, gw), gaussian_std)
    x = model.visual_projection(vm.post_layernorm(x))[:, 1:]
    return x / x.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------
# Image
# --------------------------------------------------------------------------

def load_rgb(path: str) -> np.ndarray:
    """PIL open + convert("RGB") -> float32 [H, W, 3] in 0..255 (no EXIF rotation: PIL does not apply it)."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32).copy()


def rescale_size(h: int, w: int, short_side: int, long_side: int = 2048) -> tuple:
    """mmcv.imrescale(img, (long_side, short_side), keep ratio) output size (h, w); float64 arithmetic."""
    f = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def preprocess(rgb_hwc: np.ndarray, short_side: int) -> torch.Tensor:
    """float32 HWC 0..255 -> [1, 3, Hs, Ws] normalised rescaled image.

    PUBLIC CODE: mmseg's pipeline (LoadImageFromFile + Resize(scale=(2048, S), keep_ratio=True)) reads
    uint8 BGR with cv2, resizes the uint8 image with cv2.resize(INTER_LINEAR) (fixed-point weights,
    result rounded to uint8), then normalises; zeroseg resizes the float image with torch bilinear
    (align_corners=False, no antialias) and does not round."""
    h, w = rgb_hwc.shape[:2]
    hs, ws = rescale_size(h, w, short_side)
    t = torch.from_numpy(np.ascontiguousarray(rgb_hwc, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(hs, ws), mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (t / 255.0 - mean) / std


# --------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------

def window_boxes(H: int, W: int, crop: int, stride: int) -> list:
    """[(y1, y2, x1, x2)] in SCLIP/NACLIP forward_slide order (rows outer, columns inner)."""
    h_grids = max(H - crop + stride - 1, 0) // stride + 1
    w_grids = max(W - crop + stride - 1, 0) // stride + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, H), min(x1 + crop, W)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


@torch.no_grad()
def slide_logits(model, img: torch.Tensor, queries: torch.Tensor, method: str, crop: int, stride: int,
                 use_windows: bool = True, gaussian_std: float = 5.0, batch: int = 8) -> dict:
    """Averaged cosine logits [Q, Hs, Ws] at the rescaled size, plus per-window patch logits.

    All windows have the same size (min(crop, Hs), min(crop, Ws)), so they are encoded in batches of
    `batch` (results do not depend on it beyond float rounding of the matrix products).
    no_window: one window = the whole rescaled image."""
    _, _, H, W = img.shape
    p = model.config.vision_config.patch_size
    boxes = window_boxes(H, W, crop, stride) if use_windows else [(0, H, 0, W)]
    ch, cw = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    assert all((b[1] - b[0], b[3] - b[2]) == (ch, cw) for b in boxes)
    gh, gw = ch // p, cw // p
    Q = queries.shape[0]
    preds = torch.zeros(Q, H, W, dtype=torch.float32)
    count = torch.zeros(H, W, dtype=torch.float32)
    patch_logits = []
    for i in range(0, len(boxes), batch):
        bb = boxes[i:i + batch]
        crops = torch.cat([img[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in bb], 0)
        emb = dense_patch_embeddings(model, crops, method, gaussian_std)  # [b, gh*gw, P]
        lg = (emb @ queries.T).permute(0, 2, 1).reshape(len(bb), Q, gh, gw)
        patch_logits.append(lg)
        up = F.interpolate(lg, size=(ch, cw), mode="bilinear", align_corners=False)
        for j, (y1, y2, x1, x2) in enumerate(bb):
            preds[:, y1:y2, x1:x2] += up[j]
            count[y1:y2, x1:x2] += 1
    assert bool((count > 0).all())
    preds = preds / count
    return {"preds": preds, "boxes": boxes, "patch_logits": torch.cat(patch_logits, 0), "grid": (gh, gw),
            "count": count}


# --------------------------------------------------------------------------
# PAMR
# --------------------------------------------------------------------------

# Neighbour offsets of one dilation, in the order of pamr.py's 3x3 kernels (row-major, centre skipped).
PAMR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
PAMR_OFFSETS_WITH_CENTRE = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


def _neighbours(x: torch.Tensor, dilations, offsets) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, len(dilations)*len(offsets), H, W]: x at (y + d*dy, x + d*dx) with the
    coordinates clamped to the image (= pamr.py's replicate padding by d + dilated 3x3 kernels)."""
    H, W = x.shape[-2:]
    ys, xs = torch.arange(H), torch.arange(W)
    out = []
    for d in dilations:
        for dy, dx in offsets:
            yi = (ys + dy * d).clamp(0, H - 1)
            xi = (xs + dx * d).clamp(0, W - 1)
            out.append(x[:, :, yi[:, None], xi[None, :]])
    return torch.stack(out, 2)


@torch.no_grad()
def pamr(image: torch.Tensor, mask: torch.Tensor, iterations: int = 10, dilations=(8, 16)) -> torch.Tensor:
    """NACLIP's pamr.py PAMR(num_iter, dilations): image [1, 3, H, W] guide, mask [1, Q, H, W] logits.

    affinity(p, n) = softmax over the 16 neighbours n (8 per dilation) of
        mean over channels c of  -|I_c(p) - I_c(n)| / (1e-8 + 0.1 * std_c(p)),
    std_c(p) = unbiased std (torch.std) of the 18 values {I_c at the 3x3 dilated neighbourhood incl.
    the centre, for each dilation}; then `iterations` times mask(p) = sum_n affinity(p, n) mask(n).
    (pamr.py first resizes mask to the image size with align_corners=True: the identity here.)"""
    assert image.shape[-2:] == mask.shape[-2:]
    x = image.to(torch.float32)
    std = _neighbours(x, dilations, PAMR_OFFSETS_WITH_CENTRE).std(dim=2, keepdim=True)
    diff = (x[:, :, None] - _neighbours(x, dilations, PAMR_OFFSETS)).abs()
    aff = -diff / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(dim=1, keepdim=True), dim=2)  # [1, 1, 16, H, W]
    m = mask
    for _ in range(iterations):
        m = (_neighbours(m, dilations, PAMR_OFFSETS) * aff).sum(dim=2)
    return m


# --------------------------------------------------------------------------
# Whole pipeline
# --------------------------------------------------------------------------

def class_scores(logits: torch.Tensor, class_of, num_rows: int, logit_scale: float) -> torch.Tensor:
    """[Q, H, W] logits -> [num_rows, H, W]: softmax over Q of logit_scale*logits, max over each class's names."""
    probs = F.softmax(logits * logit_scale, dim=0)
    idx = torch.tensor(class_of)
    return torch.stack([probs[idx == c].max(dim=0).values for c in range(num_rows)], 0)


def labels_from_scores(scores: torch.Tensor, num_classes: int, has_background: bool, threshold: float) -> torch.Tensor:
    """argmax (first maximum) over classes (+ background, last row); 255 where the background wins or
    the winning value < threshold.
    PUBLIC CODE: NACLIP/SCLIP set label 0 (their background class, first) where max < prob_thd."""
    best, lab = scores.max(dim=0)
    lab = lab.clone()
    bad = best < threshold
    if has_background:
        bad |= lab == num_classes
    lab[bad] = 255
    return lab.to(torch.uint8)


@torch.no_grad()
def segment(model, rgb_hwc: np.ndarray, classes, *, method: str = "naclip", refine: str = "pamr",
            use_windows: bool = True, short_side: int = 336, window: int = 224, stride: int = 112,
            templates="imagenet80", background=None, logit_scale: float = 40.0, threshold: float = 0.0,
            gaussian_std: float = 5.0, pamr_iterations: int = 10, pamr_dilations=(8, 16),
            queries: dict | None = None, batch: int = 8, timings: dict | None = None) -> dict:
    """The whole pipeline on one image (float32 HWC 0..255). Returns a dict of tensors + lists.

    PUBLIC CODE: NACLIP's predict without windows (slide_crop = 0) upsamples the patch logits straight
    to the ORIGINAL size in one bilinear step; zeroseg's no_window upsamples to the rescaled size first,
    then to the original size (the same two steps as with windows)."""
    assert method in METHODS and refine in REFINEMENTS
    t0 = time.perf_counter()
    if queries is None:
        queries = encode_queries(model, classes, templates, background)
    t1 = time.perf_counter()
    H0, W0 = rgb_hwc.shape[:2]
    img = preprocess(rgb_hwc, short_side)
    sl = slide_logits(model, img, queries["embeddings"], method, window, stride, use_windows, gaussian_std, batch)
    raw = F.interpolate(sl["preds"][None], size=(H0, W0), mode="bilinear", align_corners=False)[0]
    t2 = time.perf_counter()
    refined = None
    if refine == "pamr":
        guide = F.interpolate(img, size=(H0, W0), mode="bilinear", align_corners=False)
        refined = pamr(guide, raw[None], pamr_iterations, pamr_dilations)[0]
    t3 = time.perf_counter()
    nc = len(queries["classes"])
    has_bg = bool(queries["background"])
    scores = class_scores(refined if refined is not None else raw, queries["class_of"], nc + int(has_bg), logit_scale)
    labels = labels_from_scores(scores, nc, has_bg, threshold)
    t4 = time.perf_counter()
    if timings is not None:
        timings.update({"text": t1 - t0, "image": t2 - t1, "pamr": t3 - t2, "post": t4 - t3, "total": t4 - t0})
    return {
        "queries": queries["embeddings"], "names": queries["names"], "class_of": queries["class_of"],
        "image": img, "windows": sl["boxes"], "grid": sl["grid"], "patch_logits": sl["patch_logits"],
        "averaged": sl["preds"], "count": sl["count"], "raw": raw, "refined": refined, "scores": scores,
        "labels": labels,
    }


# --------------------------------------------------------------------------
# Self-check and CLI
# --------------------------------------------------------------------------

def _manual_vanilla(layer, x):
    """q k^T attention written out (checks that dense_last_block's head split matches transformers)."""
    attn = layer.self_attn
    nh, hd = attn.num_heads, attn.head_dim
    h = layer.layer_norm1(x)
    q, k, v = (_split_heads(p(h), nh) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    A = F.softmax(torch.matmul(q, k.transpose(-1, -2)) * hd ** -0.5, dim=-1)
    o = torch.matmul(A, v)
    b, _, t, _ = o.shape
    x = x + attn.out_proj(o.transpose(1, 2).reshape(b, t, nh * hd))
    return x + layer.mlp(layer.layer_norm2(x))


@torch.no_grad()
def self_check(model=None) -> dict:
    """Internal consistency checks; returns {name: max |diff|}."""
    res = {}
    check_templates()
    res["templates == open_clip OPENAI_IMAGENET_TEMPLATES"] = 0.0
    for gh, gw in ((4, 4), (5, 6), (6, 5), (14, 21), (21, 28), (1, 3)):
        a, b = naclip_omega(gh, gw, 5.0), omega_by_convolution(gh, gw, 5.0)
        res[f"omega formula vs convolution {gh}x{gw}"] = float((a - b).abs().max())
    # PAMR neighbours == replicate pad + dilated 3x3 one-hot kernels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 37, 29, generator=g)
    for d in (1, 8, 16):
        k = torch.zeros(9, 1, 3, 3)
        for i in range(9):
            k[i, 0, i // 3, i % 3] = 1
        conv = F.conv2d(F.pad(x.view(2, 1, 37, 29), [d] * 4, mode="replicate"), k, dilation=d).view(1, 2, 9, 37, 29)
        res[f"pamr neighbours vs replicate conv d={d}"] = float((conv - _neighbours(x, (d,), PAMR_OFFSETS_WITH_CENTRE)).abs().max())
    assert window_boxes(80, 107, 64, 32) == [(0, 64, 0, 64), (0, 64, 32, 96), (0, 64, 43, 107),
                                             (16, 80, 0, 64), (16, 80, 32, 96), (16, 80, 43, 107)]
    assert window_boxes(50, 40, 64, 32) == [(0, 50, 0, 40)]
    assert rescale_size(360, 480, 336) == (336, 448) and rescale_size(72, 96, 80) == (80, 107)
    if model is not None:
        vm = model.vision_model
        p = model.config.vision_config.patch_size
        S = model.config.vision_config.image_size
        px = torch.randn(2, 3, S + p, S + 2 * p, generator=g)
        x = vm.pre_layrnorm(vm.embeddings(px, interpolate_pos_encoding=True))
        last = vm.encoder.layers[-1]
        res["vanilla: transformers layer vs manual q k^T"] = float((dense_last_block(last, x, "vanilla", None) - _manual_vanilla(last, x)).abs().max())
        # batching must not matter
        a = dense_patch_embeddings(model, px, "naclip")
        b = torch.cat([dense_patch_embeddings(model, px[i:i + 1], "naclip") for i in range(2)])
        res["naclip batch of 2 vs one by one"] = float((a - b).abs().max())
        # no_window on a native-size image == plain transformers (vanilla)
        px2 = torch.randn(1, 3, S, S, generator=g)
        ref = vm(pixel_values=px2).last_hidden_state
        ref = model.visual_projection(vm.post_layernorm(ref))[:, 1:]
        ref = ref / ref.norm(dim=-1, keepdim=True)
        res["vanilla dense == transformers patch embeddings"] = float((dense_patch_embeddings(model, px2, "vanilla") - ref).abs().max())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--image")
    ap.add_argument("--classes", help='"cat,grass|lawn"')
    ap.add_argument("--background", default=None, help='"sky,floor": names of one extra background class')
    ap.add_argument("--method", choices=METHODS, default="naclip")
    ap.add_argument("--refine", choices=REFINEMENTS, default="pamr")
    ap.add_argument("--no-window", action="store_true")
    ap.add_argument("--short-side", type=int, default=336)
    ap.add_argument("--window", type=int, default=224)
    ap.add_argument("--stride", type=int, default=112)
    ap.add_argument("--templates", choices=sorted(TEMPLATE_SETS), default="imagenet80")
    ap.add_argument("--logit-scale", type=float, default=40.0)
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--gaussian-std", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write every output tensor to this safetensors file")
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model) if args.model else None
    if args.self_check:
        for k, v in self_check(model).items():
            print(f"  check {k}: max|diff| = {v:.3e}")
        return 0
    if not (model is not None and args.image and args.classes):
        ap.error("--model, --image and --classes are required")
    tm = {}
    r = segment(model, load_rgb(args.image), args.classes, method=args.method, refine=args.refine,
                use_windows=not args.no_window, short_side=args.short_side, window=args.window, stride=args.stride,
                templates=args.templates, background=args.background, logit_scale=args.logit_scale,
                threshold=args.threshold, gaussian_std=args.gaussian_std, timings=tm)
    print(f"names {r['names']}  windows {len(r['windows'])}  grid {r['grid']}  image {tuple(r['image'].shape)}")
    print("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in tm.items()))
    lab = r["labels"]
    for c in sorted(set(lab.flatten().tolist())):
        print(f"  label {c}: {float((lab == c).float().mean()):.3f}")
    if args.out:
        from safetensors.torch import save_file
        t = {"queries": r["queries"], "image": r["image"][0], "patch_logits": r["patch_logits"],
             "raw": r["raw"], "scores": r["scores"], "labels": r["labels"],
             "windows": torch.tensor(r["windows"], dtype=torch.int64)}
        if r["refined"] is not None:
            t["refined"] = r["refined"]
        meta = {"names": json.dumps(r["names"]), "class_of": json.dumps(r["class_of"]),
                "args": json.dumps(vars(args))}
        save_file({k: v.contiguous() for k, v in t.items()}, args.out, metadata=meta)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
