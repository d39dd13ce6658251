#!/usr/bin/env python3
"""Dump intermediate CLIP activations from transformers as a reference "stages" file.

CLI:  python scripts/reference/dump_stages.py --model DIR --out FILE [--interp HxW]

The model dir is an HF-layout CLIP checkpoint (config.json + model.safetensors),
e.g. written by synth.py or fullsize_check.py.  The output is a safetensors file
whose `__metadata__` values are all JSON-encoded strings (parse each with a JSON
parser): generator, versions, arch, seed, init, texts, probe, ...

Tensor names (F32 unless noted):
  text.input_ids I64 [B,77]   open_clip.tokenize, zero padded
  text.lengths   I64 [B]      index of eot + 1
  text.hidden_states.K        K=0..L, [B,77,W]; K=0 = token+position embeddings
  text.last_hidden_state      [B,77,W] after final_layer_norm
  text.pooled                 [B,W] final-LN state at the first eot
  text.embeds                 [B,P] text_projection(pooled), not normalised
  vision.pixel_values         [N,3,S,S] torch.randn, Generator().manual_seed(1234)
  vision.hidden_states.K      K=0..L, [N,T,W]; K=0 = after pre_layrnorm
  vision.last_hidden_state    [N,T,W] encoder output (before post_layernorm)
  vision.pooled               [N,W] post_layernorm(last_hidden_state[:,0])
  vision.embeds               [N,P] visual_projection(pooled), not normalised
  vision.patch_embeds         [N,T,P] visual_projection(post_layernorm(last_hidden_state))
  logits_per_image            [N,B]
  interp.pixel_values         [1,3,H,W] torch.randn, Generator().manual_seed(4321)
  interp.last_hidden_state    [1,T',W] with interpolate_pos_encoding=True (bicubic)
  interp.patch_embeds         [1,T',P]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synth  # noqa: E402

DUMP_NAME = "scripts/reference/dump_stages.py"
DUMP_VERSION = "zeroseg-stages-1"

CONTEXT_LENGTH = 77
EOT = 49407
PIXEL_SEED = 1234
INTERP_PIXEL_SEED = 4321
NUM_IMAGES = 2

LONG_TEXT = (
    "a very long caption describing a busy city street at dusk with many pedestrians, "
    "cyclists, parked cars, delivery vans, street lamps, shop windows, trees along the "
    "sidewalk, traffic lights turning red, a bus stop with people waiting, pigeons on the "
    "pavement, balconies with flowers, a clock tower in the distance, clouds lit in orange "
    "and pink, and a dog on a leash sniffing a lamppost near the corner bakery"
)

TEXTS = [
    "a photo of a cat.",
    "a photo of a dog.",
    "",
    "Sidewalk & traffic-light, 2 cars!",
    "ÉCOLE naïve café",
    LONG_TEXT,
]


def versions() -> dict:
    import numpy
    import open_clip
    import safetensors
    import transformers
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "open_clip_torch": open_clip.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
    }


def default_interp(image_size: int, patch: int) -> tuple:
    if image_size == 224:
        return 224, 320
    return image_size + patch, image_size + 3 * patch


def parse_hw(s: str) -> tuple:
    h, w = s.lower().split("x")
    return int(h), int(w)


def load_model(model_dir: str, attn: str = "eager"):
    from transformers import CLIPModel
    model, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True, dtype=torch.float32,
                                            attn_implementation=attn)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise AssertionError(f"loading info not clean: {bad}")
    return model.eval()


def maxabs(a, b) -> float:
    return float((a - b).abs().max())


@torch.no_grad()
def compute_stages(model, texts=TEXTS, interp_hw=None):
    import open_clip
    tcfg, vcfg = model.config.text_config, model.config.vision_config
    assert tcfg.max_position_embeddings == CONTEXT_LENGTH
    checks = {}

    # ---------------- text ----------------
    ids = open_clip.tokenize(texts, context_length=CONTEXT_LENGTH).to(torch.int64)
    is_eot = ids == EOT
    assert bool(is_eot.any(dim=1).all()), "every sequence needs an eot"
    lengths = is_eot.int().argmax(dim=1).to(torch.int64) + 1

    tm = model.text_model
    to = tm(input_ids=ids, output_hidden_states=True, return_dict=True)
    t_hs = to.hidden_states
    assert len(t_hs) == tcfg.num_hidden_layers + 1, len(t_hs)
    t_pooled = to.pooler_output
    t_embeds = model.text_projection(t_pooled)

    # behaviour checks
    emb = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding.weight[:CONTEXT_LENGTH][None]
    checks["text.hidden_states.0 == token_emb+pos_emb"] = maxabs(t_hs[0], emb)
    checks["text.last_hidden_state == final_layer_norm(hidden_states[-1])"] = maxabs(
        to.last_hidden_state, tm.final_layer_norm(t_hs[-1]))
    idx = torch.arange(ids.shape[0])
    checks["text.pooled == last_hidden_state[eot]"] = maxabs(t_pooled, to.last_hidden_state[idx, lengths - 1])

    # ---------------- vision ----------------
    S, p = vcfg.image_size, vcfg.patch_size
    g = torch.Generator().manual_seed(PIXEL_SEED)
    px = torch.randn(NUM_IMAGES, 3, S, S, generator=g, dtype=torch.float32)
    vm = model.vision_model
    vo = vm(pixel_values=px, output_hidden_states=True, return_dict=True)
    v_hs = vo.hidden_states
    assert len(v_hs) == vcfg.num_hidden_layers + 1, len(v_hs)
    v_last = vo.last_hidden_state
    v_pooled = vo.pooler_output
    v_embeds = model.visual_projection(v_pooled)
    patch_embeds = model.visual_projection(vm.post_layernorm(v_last))

    raw = vm.embeddings(px)
    checks["vision.hidden_states.0 == pre_layrnorm(embeddings)"] = maxabs(v_hs[0], vm.pre_layrnorm(raw))
    checks["vision.hidden_states.0 - raw embeddings (expected nonzero)"] = maxabs(v_hs[0], raw)
    checks["vision.last_hidden_state == hidden_states[-1]"] = maxabs(v_last, v_hs[-1])
    checks["vision.pooled == post_layernorm(last[:,0])"] = maxabs(v_pooled, vm.post_layernorm(v_last[:, 0]))
    checks["vision.patch_embeds[:,0] == vision.embeds"] = maxabs(patch_embeds[:, 0], v_embeds)

    # ---------------- full model logits ----------------
    out = model(input_ids=ids, pixel_values=px, return_dict=True)
    logits_per_image = out.logits_per_image
    ti = t_embeds / t_embeds.norm(dim=-1, keepdim=True)
    vi = v_embeds / v_embeds.norm(dim=-1, keepdim=True)
    checks["logits_per_image == exp(scale)*cos"] = maxabs(logits_per_image, model.logit_scale.exp() * vi @ ti.T)

    # ---------------- interpolated positions ----------------
    H, W = interp_hw or default_interp(S, p)
    assert H % p == 0 and W % p == 0, (H, W, p)
    g2 = torch.Generator().manual_seed(INTERP_PIXEL_SEED)
    ipx = torch.randn(1, 3, H, W, generator=g2, dtype=torch.float32)
    io = vm(pixel_values=ipx, interpolate_pos_encoding=True, return_dict=True)
    i_last = io.last_hidden_state
    i_patch = model.visual_projection(vm.post_layernorm(i_last))
    assert i_last.shape[1] == (H // p) * (W // p) + 1
    # interpolate_pos_encoding at native size must be a no-op
    same = vm(pixel_values=px, interpolate_pos_encoding=True, return_dict=True).last_hidden_state
    checks["interp at native size == plain"] = maxabs(same, v_last)
    # independent re-implementation of HF's bicubic position interpolation
    pos = vm.embeddings.position_embedding.weight
    n = int(round((pos.shape[0] - 1) ** 0.5))
    grid = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(H // p, W // p), mode="bicubic", align_corners=False)
    ipos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])], 0)
    ie = vm.embeddings.patch_embedding(ipx).flatten(2).transpose(1, 2)
    ie = torch.cat([vm.embeddings.class_embedding.expand(1, 1, -1), ie], 1) + ipos[None]
    x = vm.pre_layrnorm(ie)
    for layer in vm.encoder.layers:
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
    checks["interp manual bicubic pipeline == HF"] = maxabs(x, i_last)

    stages = {
        "text.input_ids": ids,
        "text.lengths": lengths,
    }
    for k, h in enumerate(t_hs):
        stages[f"text.hidden_states.{k}"] = h
    stages.update({
        "text.last_hidden_state": to.last_hidden_state,
        "text.pooled": t_pooled,
        "text.embeds": t_embeds,
        "vision.pixel_values": px,
    })
    for k, h in enumerate(v_hs):
        stages[f"vision.hidden_states.{k}"] = h
    stages.update({
        "vision.last_hidden_state": v_last,
        "vision.pooled": v_pooled,
        "vision.embeds": v_embeds,
        "vision.patch_embeds": patch_embeds,
        "logits_per_image": logits_per_image,
        "interp.pixel_values": ipx,
        "interp.last_hidden_state": i_last,
        "interp.patch_embeds": i_patch,
    })
    stages = {k: v.detach().contiguous().clone() for k, v in stages.items()}
    for k, v in stages.items():
        if k in ("text.input_ids", "text.lengths"):
            assert v.dtype == torch.int64, k
        else:
            assert v.dtype == torch.float32, k
    return stages, checks, (H, W)


@torch.no_grad()
def sdpa_crosscheck(model_dir: str, stages: dict) -> dict:
    """Max abs diff of the main outputs between the eager reference and transformers' default (sdpa)."""
    m = load_model(model_dir, attn="sdpa")
    to = m.text_model(input_ids=stages["text.input_ids"], return_dict=True)
    vo = m.vision_model(pixel_values=stages["vision.pixel_values"], return_dict=True)
    return {
        "sdpa vs eager text.last_hidden_state": maxabs(to.last_hidden_state, stages["text.last_hidden_state"]),
        "sdpa vs eager vision.last_hidden_state": maxabs(vo.last_hidden_state, stages["vision.last_hidden_state"]),
    }


def read_model_info(model_dir: str) -> dict:
    p = os.path.join(model_dir, "synth_info.json")
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)
    p = os.path.join(model_dir, "zeroseg_model_info.json")
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)
    return {}


def dump(model_dir: str, out_path: str, interp_hw=None, arch=None, seed=None, init=None,
         threads: int = 2, verbose: bool = True) -> dict:
    torch.set_num_threads(threads)
    t0 = time.time()
    model = load_model(model_dir)
    info = read_model_info(model_dir)
    arch = arch or info.get("arch", "unknown")
    seed = seed if seed is not None else info.get("seed")
    init = init or info.get("init") or (info.get("generator") and f"{info['generator']} ({info.get('generator_version')})")
    stages, checks, (H, W) = compute_stages(model, TEXTS, interp_hw)
    checks.update(sdpa_crosscheck(model_dir, stages))

    meta = {
        "generator": {"script": DUMP_NAME, "version": DUMP_VERSION},
        "versions": versions(),
        "arch": arch,
        "seed": seed,
        "init": init,
        "model_config": {
            "text": {k: getattr(model.config.text_config, k) for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "hidden_act", "layer_norm_eps", "eos_token_id")},
            "vision": {k: getattr(model.config.vision_config, k) for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "hidden_act", "layer_norm_eps", "image_size", "patch_size")},
            "projection_dim": model.config.projection_dim,
            "logit_scale": float(model.logit_scale.detach()),
        },
        "texts": list(TEXTS),
        "tokenizer": "open_clip.tokenize(context_length=77), zero padded",
        "pixel_values": {"vision": f"torch.randn(generator=torch.Generator().manual_seed({PIXEL_SEED}))",
                         "interp": f"torch.randn(generator=torch.Generator().manual_seed({INTERP_PIXEL_SEED}))"},
        "interp_hw": [H, W],
        "attn_implementation": "eager",
        "torch_num_threads": threads,
        "hidden_states_0": {
            "text": "embeddings output: token_embedding + position_embedding (before any layer)",
            "vision": "pre_layrnorm(class+patch embeddings + position_embedding), i.e. input of layer 0",
            "last": "hidden_states[L] is the encoder output BEFORE final_layer_norm/post_layernorm",
        },
        "probe": synth.probe("tiny", 0),
        "checks": checks,
    }
    meta_str = {k: json.dumps(v, ensure_ascii=False) for k, v in meta.items()}
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_file(stages, out_path, metadata=meta_str)
    if verbose:
        print(f"[dump_stages] {model_dir} -> {out_path} ({os.path.getsize(out_path)} bytes, {time.time()-t0:.1f}s)")
        for k, v in checks.items():
            print(f"  check {k}: max|diff| = {v:.3e}")
        for k, v in stages.items():
            if v.dtype == torch.float32:
                print(f"  {k:32s} {str(list(v.shape)):18s} max|x| = {float(v.abs().max()):.6g}")
            else:
                print(f"  {k:32s} {str(list(v.shape)):18s} {v.dtype}")
    # hard failures for checks that must be exact-ish
    for k, v in checks.items():
        if "expected nonzero" in k:
            continue
        if v > 1e-4:
            raise AssertionError(f"check failed: {k}: {v}")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--interp", type=parse_hw, default=None, help="HxW, multiples of the patch size")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    dump(args.model, args.out, args.interp, args.arch, args.seed, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
