"""Deep visual prompts (VPT-deep) as ZegCLIP's VPTCLIPVisionTransformer (deep mode, total_d_layer =
L - 1), reimplemented over transformers' CLIPVisionModel layers; shared by make_vpt_fixture.py,
vpt_fullsize_check.py and bench_vpt.py.

  x0 = pre_layrnorm(embeddings(pixels))                            [B, 1 + G, W]
  P_i = E_i @ Wp.T + bp                                            [N, W]   (E: [L, N, W])
  h = cat(x0[:, :1], P_0, x0[:, 1:]); h = layer_0(h)
  for i >= 1: h = cat(h[:, :1], P_i, h[:, 1 + N:]); h = layer_i(h)
  y = layer_norm(h, eps 1e-6; prompt_norm)
  tokens = visual_projection(post_layernorm(cat(y[:, :1], y[:, 1 + N:])))   [B, 1 + G, P]
With N = 0: tokens = visual_projection(post_layernorm(last_hidden_state)) (no prompt_norm).
Prompt dropout (ZegCLIP: 0.1 while training) is not applied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAMES = ["visual_prompts.embeddings", "visual_prompts.proj.weight", "visual_prompts.proj.bias",
         "visual_prompts.norm.weight", "visual_prompts.norm.bias"]
NORM_EPS = 1e-6


def init_params(model, n: int, generator: torch.Generator, dtype=torch.float32) -> dict:
    """Seeded prompt parameters with ZegCLIP's init ranges (uniform embeddings, std sqrt(2/W) proj)
    and a perturbed prompt_norm (so that its weight gradients are exercised)."""
    vc = model.config.vision_config
    L, W, p = vc.num_hidden_layers, vc.hidden_size, vc.patch_size
    v = (6.0 / (3 * p * p + W)) ** 0.5
    def u(shape, a, c=0.0):
        return (c + (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * a).to(dtype)
    return {
        NAMES[0]: u((L, n, W), v),
        NAMES[1]: u((W, W), (6.0 / W) ** 0.5),
        NAMES[2]: u((W,), 1 / W ** 0.5),
        NAMES[3]: u((W,), 0.1, 1.0),
        NAMES[4]: u((W,), 0.02),
    }


def prompted_tokens(model, pixels: torch.Tensor, params: dict) -> torch.Tensor:
    vm = model.vision_model
    E, Wp, bp, nw, nb = (params[k] for k in NAMES)
    n = E.shape[1]
    B = pixels.shape[0]
    x = vm.pre_layrnorm(vm.embeddings(pixels))
    if n == 0:
        h = x
        for layer in vm.encoder.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        return model.visual_projection(vm.post_layernorm(h))
    P = F.linear(E, Wp, bp)  # [L, N, W]
    h = torch.cat([x[:, :1], P[0].expand(B, -1, -1), x[:, 1:]], 1)
    for i, layer in enumerate(vm.encoder.layers):
        if i > 0:
            h = torch.cat([h[:, :1], P[i].expand(B, -1, -1), h[:, 1 + n:]], 1)
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h
    y = F.layer_norm(h, (h.shape[-1],), nw, nb, NORM_EPS)
    y = torch.cat([y[:, :1], y[:, 1 + n:]], 1)
    return model.visual_projection(vm.post_layernorm(y))


def grads(model, pixels, params, upstream):
    """tokens and d(sum(tokens * upstream)) / d params (CLIP frozen)."""
    for p in model.parameters():
        p.requires_grad_(False)
    ps = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    tokens = prompted_tokens(model, pixels, ps)
    (tokens * upstream).sum().backward()
    return tokens.detach(), {k: v.grad for k, v in ps.items()}
