#!/usr/bin/env python3
"""Deterministic synthetic CLIP checkpoints in Hugging Face layout.

The weight generator is specified bit-for-bit so that the Swift side
(ZeroSeg) can regenerate exactly the same float32 tensors without shipping
weights.  Spec (all integer arithmetic wraps mod 2^64):

    fnv1a64(bytes): h = 0xcbf29ce484222325; for b in bytes: h ^= b; h *= 0x100000001b3
    base = fnv1a64(NAME utf-8) XOR (seed * 0x9E3779B97F4A7C15)
    for i in 0..<n (row-major):
        z = base + (i+1) * 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        z = z ^ (z >> 31)
        u = Double(z >> 11) * 2^-53
        value[i] = Float(c + (2*u - 1) * a)     # float64 arithmetic, one rounding to float32, no FMA

Amplitude a / offset c per tensor: see `tensor_init`.

CLI:  python scripts/reference/synth.py --arch tiny --seed 0 --out DIR
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
from functools import lru_cache

import numpy as np

GENERATOR_NAME = "scripts/reference/synth.py"
GENERATOR_VERSION = "zeroseg-synth-1"

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

LOGIT_SCALE = 2.6592  # ln(1/0.07), HF default logit_scale_init_value

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# --------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------

_TEXT_COMMON = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)


def _vitb(patch: int) -> dict:
    return dict(
        text_config=dict(_TEXT_COMMON, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, projection_dim=512),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=patch,
                           num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                           projection_dim=512),
        projection_dim=512,
    )


ARCHS = {
    "tiny": dict(
        text_config=dict(_TEXT_COMMON, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, projection_dim=24),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=16, num_channels=3,
                           hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=24),
        projection_dim=24,
    ),
    "vit-b-16": _vitb(16),
    "vit-b-32": _vitb(32),
}


def arch_config_dict(arch: str) -> dict:
    a = ARCHS[arch]
    return dict(
        architectures=["CLIPModel"],
        model_type="clip",
        text_config=dict(a["text_config"], model_type="clip_text_model"),
        vision_config=dict(a["vision_config"], model_type="clip_vision_model"),
        projection_dim=a["projection_dim"],
        logit_scale_init_value=LOGIT_SCALE,
        initializer_factor=1.0,
    )


# --------------------------------------------------------------------------
# RNG
# --------------------------------------------------------------------------

def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def tensor_base(name: str, seed: int) -> int:
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return fnv1a64(name.encode("utf-8")) ^ ((seed * GOLDEN) & MASK64)


def synth_values(name: str, n: int, seed: int, amplitude: float, offset: float,
                 chunk: int = 1 << 22) -> np.ndarray:
    """Flat float32 array of n values for tensor `name` (see module docstring)."""
    base = np.uint64(tensor_base(name, seed))
    golden = np.uint64(GOLDEN)
    m1, m2 = np.uint64(MIX1), np.uint64(MIX2)
    s30, s27, s31, s11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
    a = float(amplitude)
    c = float(offset)
    out = np.empty(n, dtype=np.float32)
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            i1 = np.arange(start + 1, stop + 1, dtype=np.uint64)
            z = base + i1 * golden
            z = (z ^ (z >> s30)) * m1
            z = (z ^ (z >> s27)) * m2
            z = z ^ (z >> s31)
            u = (z >> s11).astype(np.float64) * (2.0 ** -53)
            v = c + (2.0 * u - 1.0) * a  # float64
            out[start:stop] = v.astype(np.float32)
    return out


def synth_values_scalar(name: str, n: int, seed: int, amplitude: float, offset: float) -> list:
    """Slow pure-Python reference of `synth_values` (used as a self-check)."""
    base = tensor_base(name, seed)
    res = []
    for i in range(n):
        z = (base + (i + 1) * GOLDEN) & MASK64
        z = ((z ^ (z >> 30)) * MIX1) & MASK64
        z = ((z ^ (z >> 27)) * MIX2) & MASK64
        z = z ^ (z >> 31)
        u = float(z >> 11) * 2.0 ** -53
        res.append(np.float32(offset + (2.0 * u - 1.0) * amplitude))
    return res


# --------------------------------------------------------------------------
# Tensor list (HF CLIPModel state-dict keys, no position_ids buffers)
# --------------------------------------------------------------------------

def _encoder_specs(prefix: str, width: int, inter: int, layers: int) -> list:
    specs = []
    for l in range(layers):
        p = f"{prefix}.encoder.layers.{l}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            specs.append((f"{p}.self_attn.{proj}.weight", (width, width)))
            specs.append((f"{p}.self_attn.{proj}.bias", (width,)))
        specs.append((f"{p}.layer_norm1.weight", (width,)))
        specs.append((f"{p}.layer_norm1.bias", (width,)))
        specs.append((f"{p}.mlp.fc1.weight", (inter, width)))
        specs.append((f"{p}.mlp.fc1.bias", (inter,)))
        specs.append((f"{p}.mlp.fc2.weight", (width, inter)))
        specs.append((f"{p}.mlp.fc2.bias", (width,)))
        specs.append((f"{p}.layer_norm2.weight", (width,)))
        specs.append((f"{p}.layer_norm2.bias", (width,)))
    return specs


def tensor_specs(arch: str) -> list:
    """[(name, shape)] for every parameter of HF CLIPModel of this arch."""
    a = ARCHS[arch]
    t, v, proj = a["text_config"], a["vision_config"], a["projection_dim"]
    tw, vw, p = t["hidden_size"], v["hidden_size"], v["patch_size"]
    ntok = (v["image_size"] // p) ** 2 + 1
    specs = [
        ("text_model.embeddings.token_embedding.weight", (t["vocab_size"], tw)),
        ("text_model.embeddings.position_embedding.weight", (t["max_position_embeddings"], tw)),
    ]
    specs += _encoder_specs("text_model", tw, t["intermediate_size"], t["num_hidden_layers"])
    specs += [
        ("text_model.final_layer_norm.weight", (tw,)),
        ("text_model.final_layer_norm.bias", (tw,)),
        ("vision_model.embeddings.class_embedding", (vw,)),
        ("vision_model.embeddings.patch_embedding.weight", (vw, v["num_channels"], p, p)),
        ("vision_model.embeddings.position_embedding.weight", (ntok, vw)),
        ("vision_model.pre_layrnorm.weight", (vw,)),
        ("vision_model.pre_layrnorm.bias", (vw,)),
    ]
    specs += _encoder_specs("vision_model", vw, v["intermediate_size"], v["num_hidden_layers"])
    specs += [
        ("vision_model.post_layernorm.weight", (vw,)),
        ("vision_model.post_layernorm.bias", (vw,)),
        ("visual_projection.weight", (proj, vw)),
        ("text_projection.weight", (proj, tw)),
        ("logit_scale", ()),
    ]
    return specs


def tensor_init(name: str, shape: tuple):
    """(amplitude, offset) for a tensor, or None for the constant logit_scale."""
    if name == "logit_scale":
        return None
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("embeddings.class_embedding"):
        return 0.05, 0.0
    if name.endswith("patch_embedding.weight"):
        _, cin, kh, kw = shape
        return 1.0 / math.sqrt(cin * kh * kw), 0.0
    if name.endswith("token_embedding.weight") or name.endswith("position_embedding.weight"):
        return 0.05, 0.0
    is_ln = any(k in name for k in ("layer_norm", "layrnorm", "layernorm"))
    if is_ln:
        return (0.1, 1.0) if leaf == "weight" else (0.02, 0.0)
    if leaf == "weight":
        assert len(shape) == 2, name
        return 1.0 / math.sqrt(shape[1]), 0.0
    if leaf == "bias":
        return 0.02, 0.0
    raise ValueError(f"no init rule for {name}")


def synth_state_dict(arch: str, seed: int) -> dict:
    sd = {}
    for name, shape in tensor_specs(arch):
        init = tensor_init(name, shape)
        if init is None:
            sd[name] = np.array(LOGIT_SCALE, dtype=np.float32).reshape(shape)
            continue
        n = int(np.prod(shape)) if shape else 1
        sd[name] = synth_values(name, n, seed, *init).reshape(shape)
    return sd


PROBE_TENSORS = [
    "text_model.embeddings.token_embedding.weight",
    "vision_model.encoder.layers.0.mlp.fc1.weight",
]


def probe(arch: str = "tiny", seed: int = 0, count: int = 8) -> dict:
    specs = dict(tensor_specs(arch))
    res = {"arch": arch, "seed": seed, "tensors": {}}
    for name in PROBE_TENSORS:
        a, c = tensor_init(name, specs[name])
        vals = synth_values(name, count, seed, a, c)
        ref = synth_values_scalar(name, count, seed, a, c)
        assert [x.tobytes() for x in vals] == [x.tobytes() for x in ref], "vectorised RNG != scalar RNG"
        res["tensors"][name] = {
            "fnv1a64": f"0x{fnv1a64(name.encode()):016x}",
            "amplitude": repr(a),
            "offset": repr(c),
            "hex": [f"0x{int(x):08x}" for x in vals.view(np.uint32)],
            "values": [repr(float(x)) for x in vals],
        }
    return res


# --------------------------------------------------------------------------
# Tokenizer / preprocessor files
# --------------------------------------------------------------------------

def _bytes_to_unicode() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=1)
def clip_vocab_and_merges():
    import open_clip.tokenizer as oct
    with gzip.open(oct.default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    enc = {tok: i for i, tok in enumerate(vocab)}
    assert len(enc) == 49408
    return enc, merges


def write_tokenizer_files(out: str, max_length: int = 77) -> None:
    vocab, merges = clip_vocab_and_merges()
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    tok_cfg = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=max_length,
                   do_lower_case=True, errors="replace", add_prefix_space=False,
                   clean_up_tokenization_spaces=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)


def write_preprocessor_config(out: str, image_size: int) -> None:
    cfg = {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": OPENAI_STD,
        "resample": 3,
        "rescale_factor": 1.0 / 255.0,
        "size": {"shortest_edge": image_size},
    }
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


TOKENIZER_CHECK_TEXTS = [
    "a photo of a cat.",
    "",
    "Sidewalk & traffic-light, 2 cars!",
    "ÉCOLE naïve café",
    "it's a   multi-space\ttab  string with 123 numbers and émojis 🐈",
    "don't STOP can't won't I'll we're they've",
    "a very long caption " + " ".join(f"word{i} item-{i}," for i in range(60)),
]


def check_tokenizer(out: str) -> None:
    """HF CLIPTokenizer from the written files must match open_clip.tokenize."""
    import open_clip
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(out)
    for text in TOKENIZER_CHECK_TEXTS:
        ref = open_clip.tokenize([text], context_length=1024)[0].tolist()
        n = ref.index(49407) + 1
        ref = ref[:n]
        hf = tok(text)["input_ids"]
        if hf != ref:
            raise AssertionError(f"tokenizer mismatch for {text!r}:\n open_clip {ref}\n hf        {hf}")


# --------------------------------------------------------------------------
# Checkpoint writer
# --------------------------------------------------------------------------

def hf_config(arch: str):
    """transformers CLIPConfig for an arch."""
    from transformers import CLIPConfig
    d = arch_config_dict(arch)
    cfg = CLIPConfig(text_config=d["text_config"], vision_config=d["vision_config"],
                     projection_dim=d["projection_dim"], logit_scale_init_value=d["logit_scale_init_value"],
                     initializer_factor=d["initializer_factor"])
    cfg.architectures = ["CLIPModel"]
    cfg.dtype = "float32"
    return cfg


def write_config(out: str, arch: str) -> None:
    """config.json exactly as transformers' save_pretrained writes it (full text/vision sub-configs)."""
    hf_config(arch).save_pretrained(out)
    with open(os.path.join(out, "config.json")) as f:
        written = json.load(f)
    want = arch_config_dict(arch)
    for sub in ("text_config", "vision_config"):
        for k, v in want[sub].items():
            assert written[sub].get(k) == v, (sub, k, written[sub].get(k), v)


def load_strict(out: str):
    """Load with transformers CLIPModel, failing on any missing/unexpected/mismatched key."""
    from transformers import CLIPModel
    model, info = CLIPModel.from_pretrained(out, output_loading_info=True, dtype="float32")
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise AssertionError(f"loading info not clean: {bad}")
    return model


def write_checkpoint(arch: str, seed: int, out: str, verify: bool = True) -> dict:
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    sd = synth_state_dict(arch, seed)
    meta = {"format": "pt", "generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION,
            "arch": arch, "seed": str(seed)}
    save_file(sd, os.path.join(out, "model.safetensors"), metadata=meta)
    write_config(out, arch)
    write_preprocessor_config(out, ARCHS[arch]["vision_config"]["image_size"])
    write_tokenizer_files(out)
    with open(os.path.join(out, "synth_info.json"), "w") as f:
        json.dump({"generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION,
                   "arch": arch, "seed": seed, "probe": probe("tiny", 0)}, f, indent=2)
    if verify:
        import torch
        model = load_strict(out)
        msd = model.state_dict()
        # every parameter matches our arrays bit-for-bit, and no extra keys beyond buffers
        extra = set(msd) - set(sd) - {k for k in msd if k.endswith("position_ids")}
        assert not extra, f"model has keys we did not write: {extra}"
        for k, v in sd.items():
            t = msd[k].detach().cpu()
            assert t.dtype == torch.float32 and tuple(t.shape) == v.shape, k
            assert np.array_equal(t.numpy().view(np.uint32), v.view(np.uint32)), f"value mismatch {k}"
        check_tokenizer(out)
        from transformers import CLIPImageProcessor
        CLIPImageProcessor.from_pretrained(out)
    return sd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=False)
    ap.add_argument("--no-verify", action="store_true", help="skip the transformers round-trip checks")
    ap.add_argument("--probe", action="store_true", help="only print the tiny/seed-0 probe JSON")
    args = ap.parse_args(argv)
    if args.probe or not args.out:
        print(json.dumps(probe("tiny", 0), indent=2))
        if not args.out:
            return 0 if args.probe else 2
        return 0
    write_checkpoint(args.arch, args.seed, args.out, verify=not args.no_verify)
    print(json.dumps(probe("tiny", 0), indent=2))
    print(f"wrote {args.arch} seed {args.seed} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
