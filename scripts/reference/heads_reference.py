#!/usr/bin/env python3
"""Torch references of zeroseg's image-conditioned heads and their losses
(Sources/ZeroSegTuning/ZegCLIPHead.swift, ContextDecoderHead.swift, SegLoss.swift).

Importable by other scripts (no side effects): `ZegCLIPHeadRef`, `ContextDecoderRef`, `seg_loss`.
Written from the papers' code structure (not copied):

PUBLIC CODE: ZegCLIP (ZiqinZhou66/ZegCLIP) models/decode_heads/decode_seg.py `ATMSingleHeadSeg`
  (one stage), `TPN_DecoderLayer`, `Attention`; models/losses/criterion.py `SegPlusCriterion`
  (focal + dice). DenseCLIP (raoyongming/DenseCLIP) segmentation/denseclip/models.py
  `ContextDecoder`, `TransformerDecoderLayer`, `Attention`; denseclip.py `after_extract_feat`.

Parameter names equal the Swift heads' NamedTensors (a state_dict maps 1:1): ZegCLIPHeadRef's are
`decode_head.*`, ContextDecoderRef's `context_decoder.*`, `gamma`, `logit_scale`.

Inputs of both heads (raw CLIP outputs): text t [C, P], global g [B, P], patches f [B, G, P].
Both return scores [B, C, G]. Dropouts are left out (off).

Departure of `seg_loss("sigmoid")` from ZegCLIP (documented in SegLoss.swift): ignored pixels are
left out of the focal mean and of the dice sums instead of counting as negatives.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


# --------------------------------------------------------------------------- ZegCLIP

class ZegAttention(nn.Module):
    """q/k/v/proj Linear(D, D) with bias; returns (out, mean over heads of the scaled logits)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xq, xkv):
        B, Nq, D = xq.shape
        Nk = xkv.shape[1]
        H = self.heads
        q = self.q(xq).reshape(B, Nq, H, D // H).permute(0, 2, 1, 3)
        k = self.k(xkv).reshape(B, Nk, H, D // H).permute(0, 2, 1, 3)
        v = self.v(xkv).reshape(B, Nk, H, D // H).permute(0, 2, 1, 3)
        logits = (q @ k.transpose(-2, -1)) * self.scale          # [B, H, Nq, Nk]
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, Nq, D)
        return self.proj(out), logits.sum(1) / H


class ZegDecoderLayer(nn.Module):
    """TPN_DecoderLayer: cross-attention then FFN (relu, 4D), post-norm (norm2, norm3)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = ZegAttention(dim, heads)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt, memory):
        a, logits = self.multihead_attn(tgt, memory)
        tgt = self.norm2(tgt + a)
        tgt = self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))
        return tgt, logits


class _ZegDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList([ZegDecoderLayer(dim, heads) for _ in range(layers)])


class _ZegDecodeHead(nn.Module):
    def __init__(self, dim: int, width: int, heads: int, layers: int):
        super().__init__()
        self.input_proj_1 = nn.Linear(dim, width)
        self.proj_norm_1 = nn.LayerNorm(width)
        self.decoder_1 = _ZegDecoder(width, heads, layers)
        self.q_proj = nn.Linear(2 * dim, width)


class ZegCLIPHeadRef(nn.Module):
    """Relationship descriptor + ATM decoder; scores = the last layer's mean pre-softmax logits."""

    def __init__(self, dim: int, width: int, heads: int, layers: int):
        super().__init__()
        self.decode_head = _ZegDecodeHead(dim, width, heads, layers)

    def forward(self, text, glob, patches, all_maps: bool = False):
        h = self.decode_head
        t, g, f = _normalize(text), _normalize(glob), _normalize(patches)
        B, C = g.shape[0], t.shape[0]
        te = t.expand(B, -1, -1)
        q = h.q_proj(torch.cat([g[:, None, :] * te, te], dim=-1))      # [B, C, D]
        lateral = h.proj_norm_1(h.input_proj_1(f))                     # [B, G, D]
        maps = []
        for layer in h.decoder_1.layers:
            q, logits = layer(q, lateral)
            maps.append(logits)
        return maps if all_maps else maps[-1]


# --------------------------------------------------------------------------- DenseCLIP

class DenseAttention(nn.Module):
    """q_proj/k_proj/v_proj Linear(D, D) without bias, proj with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xq, xkv):
        B, N, D = xq.shape
        M = xkv.shape[1]
        H = self.heads
        q = self.q_proj(xq).reshape(B, N, H, D // H)
        k = self.k_proj(xkv).reshape(B, M, H, D // H)
        v = self.v_proj(xkv).reshape(B, M, H, D // H)
        attn = (torch.einsum("bnkc,bmkc->bknm", q, k) * self.scale).softmax(-1)
        out = torch.einsum("bknm,bmkc->bnkc", attn, v).reshape(B, N, D)
        return self.proj(out)


class DenseDecoderLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention to the visual context, MLP (4D, exact GELU)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = DenseAttention(dim, heads)
        self.cross_attn = DenseAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x, mem):
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.norm2(x), mem)
        return x + self.mlp(self.norm3(x))


class _ContextDecoder(nn.Module):
    def __init__(self, dim: int, width: int, heads: int, layers: int):
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.decoder = nn.ModuleList([DenseDecoderLayer(width, heads) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(self, text, visual):
        mem = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, mem)
        return self.out_proj(x)


class ContextDecoderRef(nn.Module):
    """t' = t + gamma * context_decoder(t, cat(g, f)); scores = exp(logit_scale) * cos(f, t')."""

    def __init__(self, dim: int, width: int, heads: int, layers: int, log_scale: float):
        super().__init__()
        self.context_decoder = _ContextDecoder(dim, width, heads, layers)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-4))
        self.logit_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, text, glob, patches):
        B = glob.shape[0]
        visual = torch.cat([glob[:, None, :], patches], dim=1)         # [B, 1+G, P]
        te = text.expand(B, -1, -1)                                     # [B, C, P]
        t2 = te + self.gamma * self.context_decoder(te, visual)
        return self.logit_scale.exp() * torch.einsum("bcp,bgp->bcg", _normalize(t2), _normalize(patches))


# --------------------------------------------------------------------------- losses

def seg_loss(kind: str, scores: torch.Tensor, gh: int, gw: int, targets: torch.Tensor) -> torch.Tensor:
    """scores [B, C, G], targets int64 [B, H, W] (class index, or -1/anything outside 0..C-1: ignored)."""
    B, C, _ = scores.shape
    H, W = targets.shape[1:]
    up = F.interpolate(scores.reshape(B, C, gh, gw), size=(H, W), mode="bilinear", align_corners=False)
    valid = (targets >= 0) & (targets < C)
    if kind == "softmax":
        t = torch.where(valid, targets, torch.full_like(targets, -100))
        return F.cross_entropy(up, t, ignore_index=-100, reduction="sum") / valid.sum()
    if kind != "sigmoid":
        raise ValueError(kind)
    alpha, gamma = 0.25, 2.0
    onehot = torch.stack([(targets == c) for c in range(C)], dim=1).to(up.dtype)  # [B, C, H, W]
    m = valid[:, None].expand(-1, C, -1, -1).to(up.dtype)
    present = (onehot * m).flatten(2).sum(-1) > 0                                # [B, C]
    num_masks = max(1, int(present.sum()))
    p = up.sigmoid()
    ce = F.binary_cross_entropy_with_logits(up, onehot, reduction="none")
    pt = p * onehot + (1 - p) * (1 - onehot)
    at = alpha * onehot + (1 - alpha) * (1 - onehot)
    focal_px = at * (1 - pt) ** gamma * ce * m
    n = m.flatten(2).sum(-1)                                                     # counted pixels per (b, c)
    focal = torch.where(n > 0, focal_px.flatten(2).sum(-1) / n.clamp(min=1), torch.zeros_like(n)).sum() / num_masks
    inter = (p * onehot * m).flatten(2).sum(-1)
    sp = (p * m).flatten(2).sum(-1)
    sy = (onehot * m).flatten(2).sum(-1)
    dice_bc = 1 - (2 * inter + 1) / (sp + sy + 1)
    dice = (dice_bc * present.to(up.dtype)).sum() / num_masks
    return 20 * focal + dice
