#!/usr/bin/env python3
"""PyTorch side of `zeroseg bench --cases index` (issue 14): open_clip's own batched image encoding,
the baseline of the goal "indexing throughput (global + region embeddings) at least 1.5x open_clip's
batched image encoding (batch 32, same random ViT-B/16) in the same run".

The model: open_clip 'ViT-B-16' (open_clip.create_model_and_transforms('ViT-B-16',
force_quick_gelu=True): the synthetic ViT-B/16 of synth.py uses quick_gelu, as OpenAI's CLIP does;
plain 'ViT-B-16' would use exact GELU) with the weights of --model (a Hugging Face CLIP directory,
model.safetensors) mapped to open_clip's names (hf_to_openclip: q/k/v concatenated into in_proj,
projections transposed) and loaded strictly. Checked on every run: the mapping inverts
make_openclip_fixtures.to_hf exactly, and open_clip's encode_image of the first bench image equals
transformers' CLIPModel (visual_projection(vision_model(...).pooler_output), same pixels) within
--check-tol relative to the largest |value| (the script fails otherwise).

The case: N images (--count, default 64) decoded with PIL (Image.open(...).convert("RGB")), open_clip's
own eval preprocess for ViT-B-16 (resize the short side to 224, bicubic; center crop 224; to tensor;
normalize with OpenAI's mean / std), model.encode_image in batches of --batch (32), L2-normalised
(encode_image(..., normalize=True)); float32, eval, torch.inference_mode,
torch.set_num_threads(--threads), set_num_interop_threads(1). Timed: best of --repeats runs of the
whole thing (decode + preprocess + encode, batch by batch) after a warm-up of one batch; also, best of
--repeats, decode + preprocess alone and encode alone (the preprocessed batches ready in memory).
Reported as images per second (N / seconds).

Images (the same files as the zeroseg side): --images (files or folders; a folder means its .png /
.jpg / .jpeg files sorted by name); by default the first N files of ../shared/data/camvid/val (beside
the checkout; CamVid val is 101 RGB PNGs of 480x360) sorted by name if that folder exists, else
examples/*.jpg sorted by name; repeated cyclically when there are fewer than N.

CLI:  python scripts/reference/bench_index.py [--model DIR] [--threads 2] [--repeats 3] [--count 64]
          [--batch 32] [--images PATH ...] [--json OUT]
      (default model: the random ViT-B/16 of synth.py, seed 0, written to a temporary folder — the
      weights `zeroseg weights synth --arch vit-b-16 --seed 0` writes)
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__

import argparse
import collections
import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

BENCH_NAME = "scripts/reference/bench_index.py"
BENCH_VERSION = "zeroseg-bench-index-reference-1"
CAMVID_VAL = os.path.join(ROOT, "..", "shared", "data", "camvid", "val")
EXAMPLES = os.path.join(ROOT, "examples")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
OPENCLIP_NAME = "ViT-B-16"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(max(1, n)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def image_files(paths: list | None, count: int) -> tuple:
    """(files, source): count files, repeated cyclically if there are fewer."""
    def listdir(d):
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith(IMAGE_EXTS))

    if paths:
        found = []
        for p in paths:
            found += listdir(p) if os.path.isdir(p) else [p]
        source = " ".join(paths)
    elif os.path.isdir(CAMVID_VAL):
        found, source = listdir(CAMVID_VAL)[:count], os.path.relpath(os.path.normpath(CAMVID_VAL), ROOT)
    else:
        found = sorted(os.path.join(EXAMPLES, f) for f in os.listdir(EXAMPLES) if f.lower().endswith((".jpg", ".jpeg")))
        source = "examples/*.jpg"
    if not found:
        raise SystemExit(f"error: no images in {source}")
    return [found[i % len(found)] for i in range(count)], source


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def hf_to_openclip(hf: dict) -> collections.OrderedDict:
    """transformers CLIPModel state dict -> open_clip CLIP state dict (the inverse of
    make_openclip_fixtures.to_hf); position_ids buffers are dropped."""
    import torch
    hf = {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    out = collections.OrderedDict()
    used = set()

    def take(k):
        used.add(k)
        return hf[k]

    def layers(src, dst):
        n = 1 + max(int(k[len(src):].split(".")[0]) for k in hf if k.startswith(src))
        for i in range(n):
            s, d = f"{src}{i}.", f"{dst}{i}."
            out[d + "attn.in_proj_weight"] = torch.cat([take(s + f"self_attn.{p}_proj.weight") for p in "qkv"])
            out[d + "attn.in_proj_bias"] = torch.cat([take(s + f"self_attn.{p}_proj.bias") for p in "qkv"])
            for a, z in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
                for p in ["weight", "bias"]:
                    out[d + f"{a}.{p}"] = take(s + f"{z}.{p}").clone()

    out["positional_embedding"] = take("text_model.embeddings.position_embedding.weight").clone()
    out["text_projection"] = take("text_projection.weight").t().contiguous()
    out["logit_scale"] = take("logit_scale").clone()
    out["visual.class_embedding"] = take("vision_model.embeddings.class_embedding").clone()
    out["visual.positional_embedding"] = take("vision_model.embeddings.position_embedding.weight").clone()
    out["visual.proj"] = take("visual_projection.weight").t().contiguous()
    out["visual.conv1.weight"] = take("vision_model.embeddings.patch_embedding.weight").clone()
    for a, z in [("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm")]:
        for p in ["weight", "bias"]:
            out[f"{a}.{p}"] = take(f"{z}.{p}").clone()
    layers("vision_model.encoder.layers.", "visual.transformer.resblocks.")
    out["token_embedding.weight"] = take("text_model.embeddings.token_embedding.weight").clone()
    layers("text_model.encoder.layers.", "transformer.resblocks.")
    for p in ["weight", "bias"]:
        out[f"ln_final.{p}"] = take(f"text_model.final_layer_norm.{p}").clone()
    assert used == set(hf), f"HF tensors not mapped: {sorted(set(hf) - used)}"
    return out


def check_config(model_dir: str) -> dict:
    """The HF config must be the ViT-B/16 that open_clip's 'ViT-B-16' builds (quick_gelu)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    v, t = cfg["vision_config"], cfg["text_config"]
    want = {"vision hidden_size": (v.get("hidden_size"), 768), "vision layers": (v.get("num_hidden_layers"), 12),
            "patch_size": (v.get("patch_size"), 16), "image_size": (v.get("image_size"), 224),
            "vision heads": (v.get("num_attention_heads"), 12), "vision act": (v.get("hidden_act"), "quick_gelu"),
            "text hidden_size": (t.get("hidden_size"), 512), "text layers": (t.get("num_hidden_layers"), 12),
            "text act": (t.get("hidden_act"), "quick_gelu"), "projection_dim": (cfg.get("projection_dim"), 512)}
    bad = {k: got for k, (got, exp) in want.items() if got != exp}
    if bad:
        raise SystemExit(f"error: {model_dir} is not the ViT-B/16 (quick_gelu) open_clip's {OPENCLIP_NAME} builds: {bad}")
    return cfg


def load_openclip(model_dir: str):
    """(open_clip model, its eval preprocess, the HF state dict as torch tensors)."""
    import open_clip
    import torch
    from safetensors.torch import load_file
    from make_openclip_fixtures import to_hf

    check_config(model_dir)
    hf = load_file(os.path.join(model_dir, "model.safetensors"))
    oc = hf_to_openclip(hf)
    back = to_hf(oc)  # the fixture generator's own mapping, the other way: must give every tensor back
    hf_cmp = {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    assert set(back) == set(hf_cmp) and all(torch.equal(back[k], hf_cmp[k]) for k in back), "mapping does not invert to_hf"
    model, _, preprocess = open_clip.create_model_and_transforms(OPENCLIP_NAME, pretrained=None, force_quick_gelu=True)
    missing, unexpected = model.load_state_dict(oc, strict=True)
    assert not missing and not unexpected
    return model.eval(), preprocess, hf


def check_against_transformers(model_dir: str, oc_model, pixels) -> dict:
    """open_clip encode_image vs transformers CLIPModel on the same pixels [1, 3, 224, 224]."""
    import torch
    import bench
    hf = bench.load_model(model_dir)
    bench.set_attn(hf, "eager", "eager")
    with torch.inference_mode():
        a = oc_model.encode_image(pixels).double()
        b = bench.image_module(hf)(pixels).double()
    diff, scale = float((a - b).abs().max()), float(b.abs().max())
    cos = float(torch.nn.functional.cosine_similarity(a, b).min())
    del hf
    return {"max_abs_diff": diff, "max_abs_value": scale, "relative": diff / scale, "cosine": cos}


# --------------------------------------------------------------------------

def run(args) -> dict:
    import open_clip
    import PIL
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    files, source = image_files(args.images, args.count)
    res = {"tool": BENCH_NAME, "version": BENCH_VERSION, "model": args.model, "threads": args.threads,
           "repeats": args.repeats, "batch": args.batch, "loadavg_start": loadavg(), "cases": {}, "notes": [],
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "open_clip": open_clip.__version__, "pillow": PIL.__version__, "numpy": np.__version__},
           "images": {"source": source, "count": len(files), "unique": len(set(files)),
                      "files": [os.path.basename(f) for f in files[:len(set(files))]]}}
    log(f"loading {args.model} into open_clip {OPENCLIP_NAME} (force_quick_gelu)")
    model, preprocess, _ = load_openclip(args.model)
    res["preprocess"] = repr(preprocess)
    res["openclip_model"] = f"open_clip.create_model_and_transforms('{OPENCLIP_NAME}', force_quick_gelu=True)"

    def load(f):
        with Image.open(f) as im:
            return im.convert("RGB")

    first = preprocess(load(files[0])).unsqueeze(0)
    chk = res["check"] = check_against_transformers(args.model, model, first)
    log(f"open_clip vs transformers, image 0: max |diff| {chk['max_abs_diff']:.2e} "
        f"(largest |value| {chk['max_abs_value']:.3g}, relative {chk['relative']:.2e}), min cosine {chk['cosine']:.9f}")
    if not chk["relative"] <= args.check_tol:
        raise SystemExit(f"error: open_clip and transformers disagree: relative {chk['relative']:.3g} > {args.check_tol}")

    batches = [files[i:i + args.batch] for i in range(0, len(files), args.batch)]
    n = len(files)

    def prep(batch):
        return torch.stack([preprocess(load(f)) for f in batch])

    def encode(x):
        return model.encode_image(x, normalize=True)

    def whole():
        return torch.cat([encode(prep(b)) for b in batches])

    with torch.inference_mode():
        encode(prep(batches[0]))  # warm-up: one batch
        emb = whole()
        assert emb.shape == (n, 512) and torch.allclose(emb.norm(dim=1), torch.ones(n), atol=1e-5)
        c = res["cases"]["index"] = {"label": f"index: {n} images, batch {args.batch}, decode + preprocess + encode",
                                     "images": n, "embedding_dim": int(emb.shape[1])}
        c["torch"] = best_of(args.repeats, whole)
        c["images_per_second"] = n / c["torch"]
        log(f"decode + preprocess + encode: {c['torch']:.3f} s, {c['images_per_second']:.2f} images/s")
        c["preprocess_seconds"] = best_of(args.repeats, lambda: [prep(b) for b in batches])
        log(f"decode + preprocess alone: {c['preprocess_seconds']:.3f} s")
        ready = [prep(b) for b in batches]
        c["encode_seconds"] = best_of(args.repeats, lambda: [encode(x) for x in ready])
        c["encode_images_per_second"] = n / c["encode_seconds"]
        log(f"encode alone: {c['encode_seconds']:.3f} s, {c['encode_images_per_second']:.2f} images/s")
        # a fingerprint of the embeddings, to see that two runs encoded the same thing
        c["embeddings_sha256"] = hashlib.sha256(emb.numpy().astype(np.float32).tobytes()).hexdigest()[:16]
    res["loadavg_end"] = loadavg()
    return res


def print_table(res: dict) -> None:
    c = res["cases"]["index"]
    v = res["versions"]
    print(f"reference: open_clip {v['open_clip']} {OPENCLIP_NAME} (quick_gelu) / torch {v['torch']} / pillow {v['pillow']};"
          f" {res['threads']} threads; best of {res['repeats']}; open_clip vs transformers rel. diff {res['check']['relative']:.1e}")
    print(f"images: {res['images']['count']} from {res['images']['source']} ({res['images']['unique']} distinct files)")
    print(f"{'case':<52} {'seconds':>9} {'images/s':>9}")
    print(f"{'index: decode + preprocess + encode (batch ' + str(res['batch']) + ')':<52} {c['torch']:9.3f} {c['images_per_second']:9.2f}")
    print(f"{'  decode + preprocess alone':<52} {c['preprocess_seconds']:9.3f} {c['images'] / c['preprocess_seconds']:9.2f}")
    print(f"{'  encode alone (preprocessed tensors ready)':<52} {c['encode_seconds']:9.3f} {c['encode_images_per_second']:9.2f}")
    print(f"load average: start {res['loadavg_start']}, end {res['loadavg_end']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="CLIP ViT-B/16 directory in the Hugging Face layout (default: synth.py's, seed 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (the best is reported)")
    ap.add_argument("--count", type=int, default=64, help="images")
    ap.add_argument("--batch", type=int, default=32, help="images per encode_image call")
    ap.add_argument("--images", nargs="+", help="image files or folders (default: CamVid val, else examples/*.jpg)")
    ap.add_argument("--check-tol", type=float, default=1e-4,
                    help="largest allowed max|open_clip - transformers| / max|value| on image 0")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if min(args.threads, args.repeats, args.count, args.batch) < 1:
        ap.error("--threads, --repeats, --count and --batch must be at least 1")
    tmp = None
    try:
        if args.model is None:
            import synth
            tmp = tempfile.TemporaryDirectory(prefix="zeroseg-bench-index.")
            args.model = tmp.name
            log("writing the synthetic ViT-B/16 (synth.py --arch vit-b-16 --seed 0)")
            synth.write_checkpoint("vit-b-16", 0, tmp.name, verify=False)
        elif not os.path.isfile(os.path.join(args.model, "model.safetensors")):
            ap.error(f"--model {args.model}: no model.safetensors")
        res = run(args)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if tmp is not None:
        res["model"] = "synth.py --arch vit-b-16 --seed 0 (temporary)"
    print_table(res)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
