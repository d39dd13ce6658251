#!/usr/bin/env python3
"""Make the OpenCLIP checkpoint fixtures of zeroseg into
Tests/ZeroSegTests/Fixtures/checkpoints/openclip/ (read by OpenCLIPTests.swift).

    pip install -r scripts/reference/requirements.txt   # torch, open_clip_torch 3.3.0, transformers, safetensors
    python scripts/reference/make_openclip_fixtures.py

(make_checkpoint_fixtures.py, which rewrites the whole checkpoints folder, calls this too.)

A small, seeded, random open_clip `CLIP` (open_clip.model.CLIP: ViT image tower, text transformer,
quick_gelu like OpenAI's models), saved the ways the hub's OpenCLIP repositories hold it:

  open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}, the hub layout
                               (what open_clip.create_model('hf-hub:...' / 'local-dir:...') reads)
  open_clip_model.safetensors  safetensors.torch.save_file(model.state_dict())
  open_clip_pytorch_model.bin  torch.save(model.state_dict())
  config.json,                 the same weights under transformers' CLIPModel names (q/k/v split out of
  pytorch_model.bin            in_proj, projections transposed), plus the int64 position_ids buffers that
                               transformers < 4.31 saved (openai/clip-vit-*'s pytorch_model.bin have them),
                               and its CLIPConfig
  openclip_reference.json      open_clip's own encode_text / encode_image (normalize=False) for 3 texts
                               (tokenized by open_clip.tokenize) and 2 seeded pixel tensors

Size: the token embedding (49408 x width) is nearly all of each file, so the text width is 4 and the
token embedding is stored as float16 (every other tensor float32); the reference is computed in
float32 from the float16-rounded values, so the files hold exactly the weights the reference used.

Checks made here (the script fails otherwise): open_clip loads each weights file back through
'local-dir:' (the config as open_clip reads it) and reproduces the reference bit for bit; transformers'
CLIPModel loads pytorch_model.bin strictly and matches the reference (max abs difference written to
the README).
"""
import collections
import json
import os
import shutil
import sys
import tempfile

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "checkpoints", "openclip")

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

MODEL_CFG = collections.OrderedDict(
    embed_dim=8,
    quick_gelu=True,
    vision_cfg=collections.OrderedDict(image_size=32, layers=2, width=16, head_width=8, patch_size=8),
    text_cfg=collections.OrderedDict(context_length=77, vocab_size=49408, width=4, heads=2, layers=2),
)
PREPROCESS_CFG = collections.OrderedDict(mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", resize_mode="shortest")
TEXTS = ["a photo of a cat.", "a dog", "Zero-shot segmentation, with CLIP!"]

DESCRIPTIONS = {
    "open_clip_config.json": "OpenCLIP config in the hub layout: model_cfg (embed_dim 8, quick_gelu, ViT 32 px / patch 8 / width 16 / 2 layers, "
                             "text width 4 / 2 heads / 2 layers) + preprocess_cfg",
    "open_clip_model.safetensors": "safetensors of the open_clip CLIP state_dict (token embedding float16, the rest float32)",
    "open_clip_pytorch_model.bin": "torch.save of the same state_dict",
    "config.json": "transformers CLIPConfig of the same model",
    "pytorch_model.bin": "torch.save of the same weights under transformers' CLIPModel names, with the int64 "
                         "position_ids buffers older transformers saved",
    "openclip_reference.json": "open_clip's encode_text / encode_image (normalize=False) for 3 texts and 2 seeded pixel tensors",
}


def build_model():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in MODEL_CFG.items()}).eval()
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        # open_clip initialises LayerNorms to (1, 0) and the attention/MLP biases to 0: make them random,
        # so that a swapped or dropped tensor shows.
        for name, p in model.named_parameters():
            if name.endswith("bias") or ("ln_" in name and name.endswith("weight")):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
        model.logit_scale.fill_(2.5)
        # Stored as float16: round it now, so the reference uses exactly the stored values.
        model.token_embedding.weight.copy_(model.token_embedding.weight.half().float())
    return model


def stored_state_dict(model):
    sd = collections.OrderedDict()
    for k, t in model.state_dict().items():
        t = t.detach().clone().contiguous()
        sd[k] = t.half() if k == "token_embedding.weight" else t
    return sd


def to_hf(sd):
    """open_clip CLIP state dict -> transformers CLIPModel state dict (same tensors, HF names)."""
    out = collections.OrderedDict()
    used = set()

    def take(k):
        used.add(k)
        return sd[k]

    def layers(src, dst):
        n = 1 + max(int(k[len(src):].split(".")[0]) for k in sd if k.startswith(src))
        for i in range(n):
            s, d = f"{src}{i}.", f"{dst}{i}."
            w, b = take(s + "attn.in_proj_weight"), take(s + "attn.in_proj_bias")
            for j, qkv in enumerate(["q_proj", "k_proj", "v_proj"]):
                width = w.shape[1]
                out[d + f"self_attn.{qkv}.weight"] = w[j * width:(j + 1) * width].clone()
                out[d + f"self_attn.{qkv}.bias"] = b[j * width:(j + 1) * width].clone()
            for a, z in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
                for p in ["weight", "bias"]:
                    out[d + f"{z}.{p}"] = take(s + f"{a}.{p}").clone()

    out["text_model.embeddings.token_embedding.weight"] = take("token_embedding.weight").clone()
    out["text_model.embeddings.position_embedding.weight"] = take("positional_embedding").clone()
    layers("transformer.resblocks.", "text_model.encoder.layers.")
    for p in ["weight", "bias"]:
        out[f"text_model.final_layer_norm.{p}"] = take(f"ln_final.{p}").clone()
    out["text_projection.weight"] = take("text_projection").t().contiguous()
    out["vision_model.embeddings.class_embedding"] = take("visual.class_embedding").clone()
    out["vision_model.embeddings.patch_embedding.weight"] = take("visual.conv1.weight").clone()
    out["vision_model.embeddings.position_embedding.weight"] = take("visual.positional_embedding").clone()
    for a, z in [("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm")]:
        for p in ["weight", "bias"]:
            out[f"{z}.{p}"] = take(f"{a}.{p}").clone()
    layers("visual.transformer.resblocks.", "vision_model.encoder.layers.")
    out["visual_projection.weight"] = take("visual.proj").t().contiguous()
    out["logit_scale"] = take("logit_scale").clone()
    assert used == set(sd), set(sd) - used  # every open_clip tensor converted, none twice-named
    return out


def hf_config():
    from transformers import CLIPConfig
    v, t = MODEL_CFG["vision_cfg"], MODEL_CFG["text_cfg"]
    return CLIPConfig(
        text_config=dict(hidden_size=t["width"], num_attention_heads=t["heads"], num_hidden_layers=t["layers"],
                         intermediate_size=4 * t["width"], vocab_size=t["vocab_size"],
                         max_position_embeddings=t["context_length"], hidden_act="quick_gelu", layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(hidden_size=v["width"], num_attention_heads=v["width"] // v["head_width"],
                           num_hidden_layers=v["layers"], intermediate_size=4 * v["width"], image_size=v["image_size"],
                           patch_size=v["patch_size"], hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=MODEL_CFG["embed_dim"])


def pooled(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def make(out=OUT):
    import open_clip
    import safetensors.torch
    from transformers import CLIPModel

    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model = build_model()
    sd = stored_state_dict(model)
    assert set(sd) == set(model.state_dict()) and "attn_mask" not in sd
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, f, indent=2)
    safetensors.torch.save_file(sd, os.path.join(out, "open_clip_model.safetensors"), metadata={"format": "pt"})
    torch.save(sd, os.path.join(out, "open_clip_pytorch_model.bin"))
    os.chmod(os.path.join(out, "open_clip_model.safetensors"), 0o644)  # save_file makes it 0600

    # The reference: open_clip's own encoders, on its own tokenizer's (padded) tokens.
    tokens = open_clip.tokenize(TEXTS)  # [3, 77], zero padded
    ids = [[int(x) for x in row[: int((row == 49407).nonzero()[0]) + 1]] for row in tokens]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        text = model.encode_text(tokens, normalize=False)
        image = model.encode_image(pixels, normalize=False)

    # open_clip reads the files back (config through 'local-dir:', as from a hub snapshot): same numbers.
    for weights in ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        with tempfile.TemporaryDirectory() as tmp:
            for f in ["open_clip_config.json", weights]:
                shutil.copy(os.path.join(out, f), tmp)
            m = open_clip.create_model("local-dir:" + tmp).eval()
            with torch.no_grad():
                assert torch.equal(m.encode_text(tokens, normalize=False), text), weights
                assert torch.equal(m.encode_image(pixels, normalize=False), image), weights

    # The same weights under transformers' names; transformers must load them strictly and agree.
    hf_sd = to_hf(sd)
    cfg = hf_config()
    # Older transformers (< 4.31) saved the position_ids buffers too, as openai/clip-vit-*'s pytorch_model.bin
    # have them: int64 [1, n] = 0..<n.
    saved = collections.OrderedDict(hf_sd)
    saved["text_model.embeddings.position_ids"] = torch.arange(MODEL_CFG["text_cfg"]["context_length"]).unsqueeze(0)
    grid = MODEL_CFG["vision_cfg"]["image_size"] // MODEL_CFG["vision_cfg"]["patch_size"]
    saved["vision_model.embeddings.position_ids"] = torch.arange(grid * grid + 1).unsqueeze(0)
    torch.save(saved, os.path.join(out, "pytorch_model.bin"))
    cfg.save_pretrained(out)
    hf = CLIPModel(cfg).eval()
    missing, unexpected = hf.load_state_dict({k: v.float() for k, v in hf_sd.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        hf_text = torch.stack([pooled(hf.get_text_features(input_ids=torch.tensor([seq])))[0] for seq in ids])
        hf_image = pooled(hf.get_image_features(pixel_values=pixels))
    hf_diff = max(float((hf_text - text).abs().max()), float((hf_image - image).abs().max()))
    assert hf_diff < 1e-5, hf_diff

    ref = collections.OrderedDict(
        texts=TEXTS, token_ids=ids, text_embeds=text.tolist(),
        pixel_values_shape=list(pixels.shape), pixel_values=pixels.reshape(-1).tolist(), image_embeds=image.tolist(),
        logit_scale=float(model.logit_scale.detach()),
        note="open_clip 3.3.0 CLIP.encode_text(open_clip.tokenize(texts), normalize=False) and "
             "encode_image(pixel_values, normalize=False) in float32 on CPU; token_ids are open_clip.tokenize's "
             "rows up to and including the end token (the rest is zero padding)",
        transformers_max_abs_diff=hf_diff)
    with open(os.path.join(out, "openclip_reference.json"), "w") as f:
        json.dump(ref, f)
    write_readme(out, hf_diff)
    return hf_diff


def write_readme(out, hf_diff):
    import open_clip
    import transformers
    files = sorted(f for f in os.listdir(out) if f != "README.md")
    lines = [
        "# OpenCLIP checkpoint fixtures",
        "",
        "Made by `scripts/reference/make_openclip_fixtures.py` (rewrites this folder) with",
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, open_clip {open_clip.__version__}, "
        f"transformers {transformers.__version__}.",
        "Read by `Tests/ZeroSegTests/OpenCLIPTests.swift`.",
        "",
        "| file | bytes | what |",
        "|---|---:|---|",
    ]
    for f in files:
        lines.append(f"| `{f}` | {os.path.getsize(os.path.join(out, f))} | {DESCRIPTIONS.get(f, '')} |")
    lines += [
        "",
        "The generator checked that open_clip (`create_model('local-dir:...')`) reads each OpenCLIP weights file back",
        "and reproduces the reference exactly, and that transformers' CLIPModel, given `pytorch_model.bin`, matches it",
        f"within {hf_diff:.3g} (max abs difference).",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    d = make()
    print(f"wrote {OUT}; transformers vs open_clip max abs diff {d:.3g}")
