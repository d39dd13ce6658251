#!/usr/bin/env python3
"""Reference timings for `zeroseg bench`: the same cases with transformers (PyTorch) and ONNX Runtime.

Cases (the same inputs as Sources/zeroseg/BenchCommand.swift):

  sgemm         torch.matmul on the ViT-B/16 layer shapes at 224 px (197 tokens: qkv, out, fc1,
                fc2), best of 20 x 5 (zeroseg measures its BLAS on the same shapes).
  image         vision_model + visual_projection, one image at the model's size (Synth "pixels",
                seed 3, amplitude 2), best of --repeats after one warm-up. PyTorch with both
                attn_implementation "sdpa" and "eager" (the faster is reported); ONNX Runtime on an
                export of the same module (its output is checked against PyTorch).
  text          the 11 CamVid classes x 80 ImageNet templates (880 prompts): open_clip.tokenize,
                batches of 256 padded to the longest prompt of the batch (what CLIPTokenizer(...,
                padding=True) gives; the text tower is causal, so the pooled outputs are those of
                77-token padding), text_model + text_projection. Tokenisation is included. Best of
                max(1, repeats-1) after a small warm-up. PyTorch sdpa and eager; ONNX Runtime too.
  text_pad77    (--pad77) the same prompts padded to 77 tokens (open_clip.tokenize as is, what
                seg_reference.encode_texts does by default); PyTorch only, one run (slow: ~5x the
                tokens).
  segment_cold  scripts/reference/seg_reference.py on a 480x360 image (zeroseg's benchImage, same
                pixels): short side 336, 224/112 windows (6), NACLIP, PAMR, 11 classes x 80
                templates; class embeddings computed (encode_queries, padding to the longest prompt
                of each batch) then `segment(..., queries=...)`. Parts: text, image (preprocess,
                windows, logits, upsampling), of which the encoder passes of the windows, PAMR, post.
  segment_warm  the same with the class embeddings already computed (zeroseg's filled class cache).
                Cold and warm: best of max(1, repeats-1), like zeroseg.
  pamr          seg_reference.pamr alone: 11 classes at 480x360, 10 iterations, dilations 8 and 16.

PyTorch: CLIPModel float32 eval, torch.set_num_threads(--threads), set_num_interop_threads(1).
Segmentation uses, per tower, the attention implementation that was faster in the image / text case
(the NACLIP last block is seg_reference's own code either way).
ONNX Runtime: CPUExecutionProvider, intra_op_num_threads=--threads, inter_op_num_threads=1,
sequential execution, graph optimisation level ORT_ENABLE_ALL.

Low-precision peers (--precisions fp32,bf16,int8; default fp32; the fp32 cases always run: they are
the reference of the accuracy figures):

  bf16   PyTorch, the same model and inputs with torch.autocast("cpu", dtype=torch.bfloat16) around
         the forward passes (bf16 weights and activations in the matrix products, fp32 accumulation,
         oneDNN). Cases image_bf16, text_bf16 (sdpa and eager timed, the faster kept),
         segment_cold_bf16, segment_warm_bf16 (seg_reference's encode_queries + segment under
         autocast; if that raises, the rows are left out and "notes" says why). "bf16" in the JSON:
         torch.backends.mkldnn.is_available(), torch.ops.mkldnn._is_mkldnn_bf16_supported(), the
         dtype autocast gives the image embeddings and a Linear, bf16 and fp32 torch.matmul rates on
         the sgemm shapes, and the implementation oneDNN's verbose mode names for a bf16 Linear.
  int8   ONNX Runtime on onnxruntime.quantization.quantize_dynamic(fp32 export, per_channel=True,
         weight_type=QInt8) (int8 weights per output channel, u8 activations quantized per tensor
         at run time by DynamicQuantizeLinear) of the image and text exports above, kept next to
         them as {what}-{key}.int8.onnx (+ .json; re-made when the fp32 export, or ORT's version,
         changes). Cases image_int8, text_int8 (timed as the fp32 ORT rows); "int8" in the JSON:
         ORT's version, per model the op counts (MatMulInteger, DynamicQuantizeLinear, ... and the
         float MatMul / Gemm / Conv left). Needs ONNX (not with --no-onnx).

  Each low-precision case has "precision" ("bf16" / "int8") and its seconds under "torch" (bf16) or
  "ort" (int8), as the fp32 cases; the fp32 cases have no "precision" key.

  "accuracy": one object per peer, against PyTorch fp32 on the same inputs:
    {"peer": "pytorch-bf16" | "ort-int8", "precision", "image_cos_min", "image_cos_mean",
     "text_cos_min", "text_cos_mean", "label_agreement", "label_agreement_all", "margin_pixels",
     "images", "texts", "label_images", "label_pixels"}
    image: cosine of the image embeddings (vision_model + visual_projection) over Synth "pixels"
      seeds 3, 4, 5, 6 (amplitude 2) and every *.jpg / *.png in --examples (default examples/ of this
      checkout), preprocessed by transformers' CLIPImageProcessor of the model directory (its
      defaults: short side to the model size, bicubic, centre crop, CLIP mean / std); "images" counts
      these inputs.
    text: cosine over the 880 prompts of the text case.
    labels (bf16 only; null for int8: ORT has no segmentation pipeline): seg_reference.segment with
      the segment_warm settings (queries computed at the same precision) on the 480x360 bench image
      and the --examples images, labels at low precision vs fp32. label_agreement = fraction of
      equal labels among the pixels whose fp32 top-2 margin exceeds 0.1, margin_pixels = their count
      (over all images); label_agreement_all = over all label_pixels. The margin is in the units of
      the logits of the final class scores (the softmax inputs): logit_scale x (best - second best
      class cosine after PAMR, each class its best name), i.e. log(p1 / p2) of the class scores.

Usage:
    python scripts/reference/bench.py --model DIR [--threads 2] [--repeats 3] [--json OUT]
        [--onnx-dir DIR] [--no-onnx] [--pad77] [--attn auto|sdpa|eager]
        [--precisions fp32,bf16,int8] [--examples DIR]
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # keep scripts/reference/ free of __pycache__

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(os.path.dirname(HERE))

BENCH_NAME = "scripts/reference/bench.py"
BENCH_VERSION = "zeroseg-bench-reference-1"

CAMVID = ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian", "bicyclist"]
TEXT_BATCH = 256
ATOL = 1e-4  # ONNX Runtime vs PyTorch, max |diff| of the projected embeddings
PRECISIONS = ("fp32", "bf16", "int8")
ACCURACY_SEEDS = (3, 4, 5, 6)  # Synth "pixels" seeds of the image-embedding accuracy inputs
LABEL_MARGIN = 0.1  # fp32 top-2 margin (logits of the class scores) above which labels are compared
SEG_KW = dict(method="naclip", refine="pamr", use_windows=True, short_side=336, window=224, stride=112,
              templates="imagenet80", logit_scale=40.0, threshold=0.0, batch=8)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def best_of(n: int, fn, warm_up: bool = True) -> float:
    """Best wall-clock seconds of `fn` over n runs (after one untimed run when warm_up)."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(max(1, n)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------
# Inputs (bit-identical to BenchCommand.swift)
# --------------------------------------------------------------------------

def bench_pixels(size: int, seed: int = 3) -> np.ndarray:
    """Synth.values(name: "pixels", seed: seed, count: 3*s*s, amplitude: 2) as [1, 3, s, s]."""
    from synth import synth_values
    return synth_values("pixels", 3 * size * size, seed, 2.0, 0.0).reshape(1, 3, size, size)


def example_files(examples_dir: str) -> list:
    """Every *.jpg / *.png directly in examples_dir, sorted by name."""
    if not examples_dir or not os.path.isdir(examples_dir):
        return []
    return [os.path.join(examples_dir, n) for n in sorted(os.listdir(examples_dir))
            if n.lower().endswith((".jpg", ".png")) and os.path.isfile(os.path.join(examples_dir, n))]


def accuracy_pixels(model_dir: str, size: int, files: list) -> list:
    """[(name, [1, 3, s, s] float32)]: Synth "pixels" seeds 3-6, then the files through the model's
    CLIPImageProcessor (transformers' defaults for the model: short side to the model size, bicubic,
    centre crop, CLIP mean / std)."""
    out = [(f"synth pixels seed {s}", bench_pixels(size, s)) for s in ACCURACY_SEEDS]
    if files:
        from PIL import Image
        from transformers import CLIPImageProcessor
        if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
            proc = CLIPImageProcessor.from_pretrained(model_dir)
        else:
            proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        for path in files:
            with Image.open(path) as im:
                pv = proc(images=im.convert("RGB"), return_tensors="np")["pixel_values"]
            out.append((os.path.basename(path), np.ascontiguousarray(pv, dtype=np.float32)))
    return out


def cosine_stats(a: np.ndarray, b: np.ndarray) -> tuple:
    """(min, mean) over rows of the cosine between a[i] and b[i] (float64)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), float(cos.mean())


def label_stats(ref: dict, low: dict, logit_scale: float) -> dict:
    """Labels of two seg_reference.segment results on one image: pixels, equal labels, and both among
    the pixels whose top-2 margin in `ref` (logit_scale x the per-class best name's refined cosine:
    the logits of the class scores) exceeds LABEL_MARGIN."""
    import torch
    lg = ref["refined"] if ref["refined"] is not None else ref["raw"]
    idx = torch.tensor(ref["class_of"])
    classes = [c for c in range(int(idx.max()) + 1)]
    cls = torch.stack([lg[idx == c].max(dim=0).values for c in classes], 0).float() * logit_scale
    if cls.shape[0] >= 2:
        top = cls.topk(2, dim=0).values
        margin = top[0] - top[1]
    else:
        margin = torch.full(cls.shape[1:], float("inf"))
    same = ref["labels"] == low["labels"]
    sure = margin > LABEL_MARGIN
    return {"pixels": int(same.numel()), "equal": int(same.sum()), "margin_pixels": int(sure.sum()),
            "margin_equal": int((same & sure).sum())}


def bench_image(w: int = 480, h: int = 360) -> np.ndarray:
    """BenchCommand.benchImage: a street-like float32 HWC 0..255 picture (sky, stripes, road) + noise."""
    from synth import synth_values
    noise = synth_values("bench-image", w * h, 4, 20.0, 0.0).reshape(h, w)
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    sky = np.broadcast_to(y < h // 3, (h, w))
    road = np.broadcast_to(y > 2 * h // 3, (h, w))
    even = np.broadcast_to((x // 60) % 2 == 0, (h, w))
    base = np.empty((h, w, 3), dtype=np.float32)
    base[...] = np.where(even[..., None], np.float32([150, 110, 80]), np.float32([60, 120, 50]))
    base[road] = np.float32([90, 90, 95])
    base[sky] = np.float32([120, 160, 220])
    px = base + noise[..., None].astype(np.float32)  # float32 + float32, as Swift
    return np.clip(px, np.float32(0), np.float32(255)).astype(np.float32)


def prompts() -> list:
    import seg_reference as sr
    return [sr.fill_template(t, c) for c in CAMVID for t in sr.IMAGENET80]


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def load_model(model_dir: str):
    from transformers import CLIPModel
    import torch
    model, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True, dtype=torch.float32,
                                            attn_implementation="sdpa")
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"error: loading {model_dir} was not clean: {bad}")
    # Copy every weight into ordinary memory: straight after loading they can still be backed by the
    # memory-mapped safetensors file, which made the first passes several times slower.
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model.eval()


def set_attn(model, vision: str, text: str) -> None:
    model.set_attn_implementation({"vision_config": vision, "text_config": text})
    got = (model.config.vision_config._attn_implementation, model.config.text_config._attn_implementation)
    if got != (vision, text):
        raise RuntimeError(f"could not set attention implementation to {(vision, text)}: have {got}")


def image_module(model):
    import torch

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.vision_model, self.visual_projection = m.vision_model, m.visual_projection

        def forward(self, pixel_values):
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    return ImageEmbeds(model).eval()


def text_module(model):
    import torch

    class TextEmbeds(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.text_model, self.text_projection = m.text_model, m.text_projection

        def forward(self, input_ids):
            return self.text_projection(self.text_model(input_ids=input_ids).pooler_output)

    return TextEmbeds(model).eval()


def text_batches(texts: list, trim: bool = True) -> list:
    """open_clip.tokenize (77, zero padded) in batches of TEXT_BATCH; trim cuts each batch after its
    longest end token (= padding to the longest prompt of the batch)."""
    import open_clip
    import torch
    import seg_reference as sr
    ids = open_clip.tokenize(texts, context_length=sr.CONTEXT_LENGTH).to(dtype=torch.int64)
    out = []
    for i in range(0, ids.shape[0], TEXT_BATCH):
        chunk = ids[i:i + TEXT_BATCH]
        if trim:
            n = int((chunk == sr.EOT).int().argmax(dim=1).max()) + 1
            chunk = chunk[:, :n]
        out.append(chunk)
    return out


# --------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------

EXPORTERS = ("torchscript-opset17", "dynamo")


def _export(module, args, path: str, input_names, output_names, dynamic_axes, dynamic_shapes,
            exporters=EXPORTERS) -> str:
    """Export with the TorchScript exporter at opset 17, else the dynamo exporter; returns which."""
    import torch
    errors = []
    for how in exporters:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if how == "dynamo":
                    prog = torch.onnx.export(module, args, None, dynamo=True, input_names=input_names,
                                             output_names=output_names, dynamic_shapes=dynamic_shapes,
                                             optimize=True)
                    prog.save(path, external_data=False)
                else:
                    torch.onnx.export(module, args, path, dynamo=False, opset_version=17,
                                      input_names=input_names, output_names=output_names,
                                      dynamic_axes=dynamic_axes, do_constant_folding=True)
            return how
        except Exception as e:  # noqa: BLE001 - report and try the next exporter
            errors.append(f"{how}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            with contextlib.suppress(OSError):
                os.remove(path)
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def model_key(model_dir: str, exporters=EXPORTERS) -> str:
    """Identifies the weights + software an export was made from (for --onnx-dir reuse)."""
    import torch
    import transformers
    st = os.path.join(model_dir, "model.safetensors")
    s = os.stat(st) if os.path.exists(st) else None
    parts = [os.path.realpath(model_dir), str(s.st_size if s else 0), str(s.st_mtime_ns if s else 0),
             torch.__version__, transformers.__version__, BENCH_VERSION, ",".join(exporters)]
    with contextlib.suppress(OSError):
        with open(os.path.join(model_dir, "config.json"), "rb") as f:
            parts.append(hashlib.sha256(f.read()).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def export_onnx(model, model_dir: str, out_dir: str, image_size: int, what: str, exporters=EXPORTERS) -> dict:
    """Exports (or reuses) {what}.onnx in out_dir; returns {"path", "exporter", "reused"}."""
    import torch
    os.makedirs(out_dir, exist_ok=True)
    key = model_key(model_dir, exporters)
    path = os.path.join(out_dir, f"{what}-{key}.onnx")
    meta_path = path + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        return dict(meta, path=path, reused=True)
    set_attn(model, "eager", "eager")  # plain matmul/softmax graphs: exportable by either exporter
    tmp = path + f".tmp{os.getpid()}"
    t0 = time.perf_counter()
    if what == "image":
        how = _export(image_module(model), (torch.zeros(1, 3, image_size, image_size),), tmp,
                      ["pixel_values"], ["image_embeds"], {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                      {"pixel_values": {0: torch.export.Dim("batch", min=1, max=64)}}, exporters)
    else:
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 269, 49407, 0, 0]] * 2, dtype=torch.int64)
        how = _export(text_module(model), (ids,), tmp, ["input_ids"], ["text_embeds"],
                      {"input_ids": {0: "batch", 1: "tokens"}, "text_embeds": {0: "batch"}},
                      {"input_ids": {0: torch.export.Dim("batch", min=1, max=1024),
                                     1: torch.export.Dim("tokens", min=2, max=77)}}, exporters)
    os.replace(tmp, path)
    meta = {"exporter": how, "export_seconds": round(time.perf_counter() - t0, 1), "model": os.path.realpath(model_dir)}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    # Drop this model's older exports (other weights / software / exporter): the directory is a cache.
    for name in os.listdir(out_dir):
        other = os.path.join(out_dir, name)
        if name.startswith(what + "-") and name.endswith(".onnx.json") and other != meta_path:
            with contextlib.suppress(OSError, ValueError):
                with open(other) as f:
                    if json.load(f).get("model") == meta["model"]:
                        os.remove(other[:-len(".json")])
                        os.remove(other)
    return dict(meta, path=path, reused=False)


INT8_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
            "ConvInteger", "QLinearMatMul", "QLinearConv", "DequantizeLinear", "QuantizeLinear", "QAttention")
FLOAT_OPS = ("MatMul", "Gemm", "Conv", "Attention")


def op_counts(path: str) -> dict:
    """{"quantized": {op: n}, "float_left": {op: n}} of an ONNX file's main graph."""
    import collections
    import onnx
    n = collections.Counter(node.op_type for node in onnx.load(path, load_external_data=False).graph.node)
    return {"quantized": {k: n[k] for k in INT8_OPS if n[k]}, "float_left": {k: n[k] for k in FLOAT_OPS if n[k]}}


def quantize_int8(fp32_path: str, fp32_meta: dict) -> dict:
    """quantize_dynamic(per_channel=True, weight_type=QInt8) of an fp32 export, kept next to it as
    {stem}.int8.onnx (+ .json) and re-made when the fp32 file or ORT's version changes.
    Returns {"path", "reused", "ops", "quantize_seconds", ...}."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    path = fp32_path[:-len(".onnx")] + ".int8.onnx"
    meta_path = path + ".json"
    st = os.stat(fp32_path)
    ident = {"source": os.path.basename(fp32_path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
             "onnxruntime": ort.__version__, "per_channel": True, "weight_type": "QInt8",
             "model": fp32_meta.get("model")}  # "model": export_onnx drops it with its fp32 export
    if os.path.exists(path) and os.path.exists(meta_path):
        with contextlib.suppress(OSError, ValueError):
            with open(meta_path) as f:
                meta = json.load(f)
            if all(meta.get(k) == v for k, v in ident.items()):
                return dict(meta, path=path, reused=True)
    tmp = path + f".tmp{os.getpid()}.onnx"
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            import logging
            logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" notes
            quantize_dynamic(fp32_path, tmp, per_channel=True, weight_type=QuantType.QInt8)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    meta = dict(ident, quantize_seconds=round(time.perf_counter() - t0, 1), ops=op_counts(path),
                fp32_ops=op_counts(fp32_path)["float_left"], size_bytes=os.path.getsize(path))
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return dict(meta, path=path, reused=False)


def ort_session(path: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def torch_sgemm_gflops(width=768, inner=3072, tokens=197, repeats=20, dtype=None) -> float:
    """torch.matmul(a, b^T) on the four ViT-B/16 layer shapes (as Bench.sgemmRate); dtype: of a, b
    and the product (default float32)."""
    import torch
    from synth import synth_values
    dtype = dtype or torch.float32
    shapes = [(tokens, 3 * width, width), (tokens, width, width), (tokens, inner, width), (tokens, width, inner)]
    mats = []
    for m, n, k in shapes:
        a = torch.from_numpy(synth_values("a", m * k, 1, 1.0, 0.0).reshape(m, k)).to(dtype)
        b = torch.from_numpy(synth_values("b", n * k, 2, 1.0, 0.0).reshape(n, k)).to(dtype)
        mats.append((a, b, torch.empty(m, n, dtype=dtype)))
    flops = sum(2.0 * m * n * k for m, n, k in shapes)

    def once():
        for a, b, c in mats:
            torch.matmul(a, b.T, out=c)

    once()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            once()
        best = min(best, (time.perf_counter() - t0) / 5)
    return flops / best / 1e9


def onednn_bf16_linear_impl() -> str | None:
    """The implementation oneDNN's verbose mode names for a bf16 Linear under autocast (e.g.
    "brg_matmul:avx512_core_amx" / "...avx512_core_bf16"), or None when it prints nothing (then the
    product did not go through oneDNN). The verbose lines go to the C stdout: caught on fd 1."""
    import ctypes
    import torch
    lin = torch.nn.Linear(768, 768)
    x = torch.randn(197, 768)
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    text = ""
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 1)
        try:
            with torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                lin(x)
                lin(x)
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    impls = []
    for line in text.splitlines():
        parts = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in parts and "cpu" in parts:
            i = parts.index("cpu")
            if i + 2 < len(parts):
                impls.append(f"{parts[i + 1]}:{parts[i + 2]}")
    return impls[-1] if impls else None


def bf16_check(model, px) -> dict:
    """Whether this torch really runs bf16 through oneDNN here (see the module docstring)."""
    import torch
    b = {"mkldnn_available": bool(torch.backends.mkldnn.is_available())}
    with contextlib.suppress(Exception):
        b["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        b["autocast_image_embeds_dtype"] = str(image_module(model)(px).dtype).replace("torch.", "")
        b["autocast_linear_dtype"] = str(torch.nn.Linear(8, 8)(torch.zeros(2, 8)).dtype).replace("torch.", "")
    try:
        b["onednn_bf16_linear"] = onednn_bf16_linear_impl()
    except Exception as e:  # noqa: BLE001 - informative only
        b["onednn_bf16_linear"] = None
        b["onednn_probe_error"] = f"{type(e).__name__}: {e}"[:200]
    b["matmul_bf16_gflops"] = round(torch_sgemm_gflops(repeats=10, dtype=torch.bfloat16), 1)
    b["matmul_fp32_gflops"] = round(torch_sgemm_gflops(repeats=10), 1)
    b["ok"] = bool(b["mkldnn_available"] and b.get("mkldnn_bf16_supported")
                   and b["autocast_image_embeds_dtype"] == "bfloat16" and b["autocast_linear_dtype"] == "bfloat16")
    return b


def time_segment(model, sr, rgb, repeats: int, ctx) -> tuple:
    """(cold, warm) dicts of the segment cases (best of max(1, repeats-1)); every forward pass inside
    ctx() (contextlib.nullcontext for fp32, torch.autocast for bf16)."""
    enc_time = [0.0]
    orig_dense = sr.dense_patch_embeddings

    def timed_dense(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig_dense(*a, **k)
        finally:
            enc_time[0] += time.perf_counter() - t0

    sr.dense_patch_embeddings = timed_dense  # slide_logits looks it up in the module: time the window passes
    cold, warm = None, None
    try:
        for _ in range(max(1, repeats - 1)):
            tm = {}
            enc_time[0] = 0.0
            t0 = time.perf_counter()
            with ctx():
                q = sr.encode_queries(model, CAMVID, "imagenet80", None, trim=True)
            t_text = time.perf_counter() - t0
            with ctx():
                r = sr.segment(model, rgb, CAMVID, queries=q, timings=tm, **SEG_KW)
            total = time.perf_counter() - t0
            if cold is None or total < cold["torch"]:
                cold = {"torch": total, "text": t_text, "image": tm["image"], "window_encoder": enc_time[0],
                        "pamr": tm["pamr"], "post": tm["post"], "windows": len(r["windows"]), "grid": list(r["grid"])}
            log(f"segment cold: {total:.3f} s (text {t_text:.3f}, image {tm['image']:.3f}, pamr {tm['pamr']:.3f})")
            tm = {}
            enc_time[0] = 0.0
            t0 = time.perf_counter()
            with ctx():
                r = sr.segment(model, rgb, CAMVID, queries=q, timings=tm, **SEG_KW)
            total = time.perf_counter() - t0
            if warm is None or total < warm["torch"]:
                warm = {"torch": total, "image": tm["image"], "window_encoder": enc_time[0], "pamr": tm["pamr"],
                        "post": tm["post"], "windows": len(r["windows"])}
            log(f"segment warm: {total:.3f} s (image {tm['image']:.3f}, pamr {tm['pamr']:.3f})")
    finally:
        sr.dense_patch_embeddings = orig_dense
    return cold, warm


def run(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    import transformers
    import seg_reference as sr

    precisions = args.precisions
    res = {"tool": BENCH_NAME, "version": BENCH_VERSION, "model": args.model, "threads": args.threads,
           "repeats": args.repeats, "loadavg_start": loadavg(), "cases": {}, "notes": [], "precisions": precisions,
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__}}
    cases = res["cases"]
    impls = ("sdpa", "eager") if args.attn == "auto" else (args.attn,)
    low = [p for p in precisions if p != "fp32"]
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    nocast = contextlib.nullcontext

    log(f"loading {args.model}")
    model = load_model(args.model)
    vc = model.config.vision_config
    S = vc.image_size
    res["arch"] = {"image_size": S, "patch_size": vc.patch_size, "vision_width": vc.hidden_size,
                   "vision_layers": vc.num_hidden_layers, "text_width": model.config.text_config.hidden_size}

    res["torch_sgemm_gflops"] = round(torch_sgemm_gflops(), 2)
    log(f"torch sgemm (ViT-B/16 layer shapes, {args.threads} threads): {res['torch_sgemm_gflops']:.1f} GFLOP/s")

    texts = prompts()
    files = example_files(args.examples) if low else []
    acc_px = accuracy_pixels(args.model, S, files) if low else []
    acc = {}  # precision -> accuracy object
    with torch.no_grad():
        # ---- image encoder
        px = torch.from_numpy(bench_pixels(S))
        img = image_module(model)
        c = cases["image"] = {"label": f"image encoder ({S} px, 1 image)"}
        ref = {}
        for impl in impls:
            set_attn(model, impl, impl)
            ref[impl] = img(px).numpy()
            c[f"torch_{impl}"] = best_of(args.repeats, lambda: img(px))
            log(f"image encoder torch {impl}: {c[f'torch_{impl}']:.3f} s")
        if len(impls) == 2:
            c["torch_sdpa_vs_eager_max_abs_diff"] = float(np.abs(ref["sdpa"] - ref["eager"]).max())
        img_impl = min(impls, key=lambda i: c[f"torch_{i}"])
        c["torch"], c["torch_attn"] = c[f"torch_{img_impl}"], img_impl

        # ---- text encoder
        txt = text_module(model)
        warm_ids = text_batches(texts[:8])
        c = cases["text"] = {"label": f"text encoder ({len(texts)} prompts)", "prompts": len(texts),
                             "batches": [list(b.shape) for b in text_batches(texts)],
                             "tokens_padded": int(sum(b.numel() for b in text_batches(texts)))}
        t0 = time.perf_counter()
        text_batches(texts)
        c["tokenize_seconds"] = time.perf_counter() - t0
        tref = {}
        for impl in impls:
            set_attn(model, img_impl, impl)
            txt(warm_ids[0])
            tref[impl] = torch.cat([txt(b) for b in text_batches(texts)]).numpy()
            c[f"torch_{impl}"] = best_of(max(1, args.repeats - 1), lambda: [txt(b) for b in text_batches(texts)], warm_up=False)
            log(f"text encoder torch {impl}: {c[f'torch_{impl}']:.3f} s")
        if len(impls) == 2:
            c["torch_sdpa_vs_eager_max_abs_diff"] = float(np.abs(tref["sdpa"] - tref["eager"]).max())
        text_impl = min(impls, key=lambda i: c[f"torch_{i}"])
        c["torch"], c["torch_attn"] = c[f"torch_{text_impl}"], text_impl
        res["attn_implementation"] = {"vision": img_impl, "text": text_impl}

        # ---- fp32 reference outputs of the accuracy inputs (the PyTorch fp32 model as timed)
        if low:
            set_attn(model, img_impl, text_impl)
            acc_ref_img = np.concatenate([img(torch.from_numpy(x)).numpy() for _, x in acc_px])
            acc_ref_txt = tref[text_impl]
            res["accuracy_inputs"] = {"images": [n for n, _ in acc_px], "texts": len(texts),
                                      "label_images": ["bench image 480x360"] + [os.path.basename(f) for f in files]}

        # ---- ONNX Runtime: image + text (fp32, then the int8 peer on the same exports)
        if not args.no_onnx:
            try:
                import onnxruntime as ort
                res["versions"]["onnxruntime"] = ort.__version__
                with contextlib.suppress(ImportError):
                    import onnx
                    res["versions"]["onnx"] = onnx.__version__
                tmpdir = None
                out_dir = args.onnx_dir
                if not out_dir:
                    tmpdir = out_dir = tempfile.mkdtemp(prefix="zeroseg-bench-onnx-")
                if "int8" in precisions:
                    res["int8"] = {"onnxruntime": ort.__version__,
                                   "quantization": "quantize_dynamic(per_channel=True, weight_type=QInt8)"}
                    acc["int8"] = {"peer": "ort-int8", "precision": "int8"}
                try:
                    for what in ("image", "text"):
                        c = cases[what]
                        ex = None
                        try:
                            log(f"ONNX export: {what} ...")
                            ex = export_onnx(model, args.model, out_dir, S, what,
                                             EXPORTERS if args.exporter == "auto" else
                                             tuple(e for e in EXPORTERS if e.startswith(args.exporter)))
                            c["ort_exporter"] = ex["exporter"] + (" (reused)" if ex["reused"] else "")
                            sess = ort_session(ex["path"], args.threads)
                            if what == "image":
                                feed = {"pixel_values": px.numpy()}
                                out = sess.run(None, feed)[0]
                                diff = float(np.abs(out - ref[impls[-1]]).max())
                                fn = lambda: sess.run(None, feed)  # noqa: E731
                                n, warm = args.repeats, True
                            else:
                                outs = [sess.run(None, {"input_ids": b.numpy()})[0] for b in text_batches(texts)]
                                diff = float(np.abs(np.concatenate(outs) - tref[impls[-1]]).max())
                                fn = lambda: [sess.run(None, {"input_ids": b.numpy()}) for b in text_batches(texts)]  # noqa: E731
                                n, warm = max(1, args.repeats - 1), False
                            c["ort_max_abs_diff"] = diff
                            if not diff <= ATOL:
                                c["ort_error"] = f"ORT output differs from PyTorch: max |diff| {diff:.3g} > {ATOL}"
                                log("WARNING: " + c["ort_error"] + f" ({what}); not timed")
                                ex = None  # no int8 peer of a suspect export
                                continue
                            c["ort"] = best_of(n, fn, warm_up=warm)
                            log(f"{what} encoder ORT ({c['ort_exporter']}, max|diff| vs torch {diff:.2e}): {c['ort']:.3f} s")
                            del sess
                        except Exception as e:  # noqa: BLE001
                            c["ort_error"] = f"{type(e).__name__}: {e}"[:500]
                            log(f"WARNING: ONNX Runtime {what} case failed: {c['ort_error']}")
                        finally:
                            if "int8" in precisions:
                                int8_peer(args, res, cases, acc, what, ex, c.get("label"), px, texts, acc_px,
                                          acc_ref_img if what == "image" else acc_ref_txt)
                finally:
                    if tmpdir:
                        shutil.rmtree(tmpdir, ignore_errors=True)
            except ImportError as e:
                res["notes"].append(f"onnxruntime not available: {e}")
                log(f"WARNING: {res['notes'][-1]}")
        elif "int8" in precisions:
            res["notes"].append("int8 peer (ONNX Runtime) skipped: --no-onnx")
            log(f"WARNING: {res['notes'][-1]}")
        set_attn(model, img_impl, text_impl)

        # ---- text padded to 77 tokens (seg_reference's default)
        if args.pad77:
            c = cases["text_pad77"] = {"label": f"text encoder, padded to 77 ({len(texts)} prompts)"}
            c["torch"] = best_of(1, lambda: [txt(b) for b in text_batches(texts, trim=False)], warm_up=False)
            c["torch_attn"] = text_impl
            log(f"text encoder padded to 77, torch {text_impl}: {c['torch']:.3f} s")

        # ---- segmentation, cold and warm
        rgb = bench_image(480, 360)
        cold, warm = time_segment(model, sr, rgb, args.repeats, nocast)
        cases["segment_cold"] = dict(cold, label="segment 480x360 cold (11x80 prompts)")
        cases["segment_warm"] = dict(warm, label="segment 480x360 warm class cache")

        # ---- PAMR alone
        import torch.nn.functional as F
        pre = sr.preprocess(rgb, 336)
        guide = F.interpolate(pre, size=(360, 480), mode="bilinear", align_corners=False)
        g = torch.Generator().manual_seed(0)
        mask = torch.randn(1, len(CAMVID), 360, 480, generator=g)
        cases["pamr"] = {"label": "PAMR (11 classes, 480x360, 10 it.)",
                         "torch": best_of(args.repeats, lambda: sr.pamr(guide, mask, 10, (8, 16)))}
        log(f"PAMR alone: {cases['pamr']['torch']:.3f} s")

        # ---- bf16 peer: PyTorch under torch.autocast(bfloat16)
        if "bf16" in precisions:
            b = res["bf16"] = bf16_check(model, px)
            log(f"bf16: mkldnn {b['mkldnn_available']}, bf16 supported {b.get('mkldnn_bf16_supported')}, autocast "
                f"output {b['autocast_image_embeds_dtype']}, oneDNN Linear {b.get('onednn_bf16_linear')}, matmul "
                f"bf16 {b['matmul_bf16_gflops']} vs fp32 {b['matmul_fp32_gflops']} GFLOP/s")
            if not b["ok"]:
                res["notes"].append("bf16: this torch does not run autocast bf16 through oneDNN here "
                                    f"({ {k: v for k, v in b.items() if k != 'ok'} }): bf16 rows timed anyway")
                log(f"WARNING: {res['notes'][-1]}")
            c = cases["image_bf16"] = {"label": f"image encoder ({S} px, 1 image) [bf16]", "precision": "bf16"}
            for impl in impls:
                set_attn(model, impl, text_impl)
                with autocast():
                    c[f"torch_{impl}"] = best_of(args.repeats, lambda: img(px))
                log(f"image encoder torch bf16 {impl}: {c[f'torch_{impl}']:.3f} s")
            img16 = min(impls, key=lambda i: c[f"torch_{i}"])
            c["torch"], c["torch_attn"] = c[f"torch_{img16}"], img16
            c = cases["text_bf16"] = {"label": f"text encoder ({len(texts)} prompts) [bf16]", "precision": "bf16"}
            for impl in impls:
                set_attn(model, img16, impl)
                with autocast():
                    txt(warm_ids[0])
                    c[f"torch_{impl}"] = best_of(max(1, args.repeats - 1), lambda: [txt(b) for b in text_batches(texts)],
                                                 warm_up=False)
                log(f"text encoder torch bf16 {impl}: {c[f'torch_{impl}']:.3f} s")
            txt16 = min(impls, key=lambda i: c[f"torch_{i}"])
            c["torch"], c["torch_attn"] = c[f"torch_{txt16}"], txt16
            res["attn_implementation_bf16"] = {"vision": img16, "text": txt16}
            set_attn(model, img16, txt16)

            a = acc["bf16"] = {"peer": "pytorch-bf16", "precision": "bf16"}
            with autocast():
                lo_img = np.concatenate([img(torch.from_numpy(x)).float().numpy() for _, x in acc_px])
                lo_txt = torch.cat([txt(b).float() for b in text_batches(texts)]).numpy()
            a["image_cos_min"], a["image_cos_mean"] = cosine_stats(acc_ref_img, lo_img)
            a["text_cos_min"], a["text_cos_mean"] = cosine_stats(acc_ref_txt, lo_txt)

            try:
                log("segmentation under torch.autocast(bfloat16):")
                cold, warm = time_segment(model, sr, rgb, args.repeats, autocast)
                cases["segment_cold_bf16"] = dict(cold, label="segment 480x360 cold (11x80 prompts) [bf16]", precision="bf16")
                cases["segment_warm_bf16"] = dict(warm, label="segment 480x360 warm class cache [bf16]", precision="bf16")
                # labels: the segment_warm settings, each precision with its own class embeddings
                lab_rgb = [rgb] + [sr.load_rgb(f) for f in files]
                tot = {"pixels": 0, "equal": 0, "margin_pixels": 0, "margin_equal": 0}
                set_attn(model, img_impl, text_impl)
                q32 = sr.encode_queries(model, CAMVID, "imagenet80", None, trim=True)
                r32 = [sr.segment(model, x, CAMVID, queries=q32, **SEG_KW) for x in lab_rgb]
                set_attn(model, img16, txt16)
                with autocast():
                    q16 = sr.encode_queries(model, CAMVID, "imagenet80", None, trim=True)
                for x, r in zip(lab_rgb, r32):
                    with autocast():
                        r16 = sr.segment(model, x, CAMVID, queries=q16, **SEG_KW)
                    for k, v in label_stats(r, r16, SEG_KW["logit_scale"]).items():
                        tot[k] += v
                a["label_agreement"] = tot["margin_equal"] / tot["margin_pixels"] if tot["margin_pixels"] else None
                a["label_agreement_all"] = tot["equal"] / tot["pixels"]
                a["margin_pixels"], a["label_pixels"], a["label_images"] = tot["margin_pixels"], tot["pixels"], len(lab_rgb)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                res["notes"].append(f"seg_reference under torch.autocast(bfloat16) failed, no bf16 segment rows / "
                                    f"label agreement: {type(e).__name__}: {e}"[:500])
                log(f"WARNING: {res['notes'][-1]}")
            set_attn(model, img_impl, text_impl)

    for p in low:
        if p in acc:
            a = acc[p]
            for k in ("image_cos_min", "image_cos_mean", "text_cos_min", "text_cos_mean", "label_agreement"):
                a.setdefault(k, None)
            a.setdefault("label_agreement_all", None)
            a.setdefault("margin_pixels", None)
            a.setdefault("label_pixels", None)
            a.setdefault("label_images", None)
            a["images"], a["texts"] = len(acc_px), len(texts)
            log(f"accuracy {a['peer']}: " + ", ".join(f"{k} {v:.6f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in a.items() if k not in ("peer", "precision")))
    if low:
        res["accuracy"] = [acc[p] for p in low if p in acc]
    res["loadavg_end"] = loadavg()
    return res


def int8_peer(args, res, cases, acc, what, ex, label, px, texts, acc_px, acc_ref) -> None:
    """The int8 ONNX Runtime peer of one tower: quantize the fp32 export `ex` (None: export failed or
    differs from PyTorch), time it as the fp32 ORT row, and its cosine to PyTorch fp32."""
    c = cases[f"{what}_int8"] = {"label": f"{label} [int8]", "precision": "int8"}
    a = acc["int8"]
    if ex is None:
        c["ort_error"] = "no usable fp32 export"
        a.setdefault("error", []).append(f"{what}: no usable fp32 export")
        return
    try:
        log(f"int8: quantize_dynamic {what} ...")
        q = quantize_int8(ex["path"], ex)
        c["ort_file"] = os.path.basename(q["path"]) + (" (reused)" if q["reused"] else "")
        c["ops"] = q["ops"]
        res["int8"][what] = {k: q.get(k) for k in ("ops", "fp32_ops", "size_bytes", "quantize_seconds", "source")}
        sess = ort_session(q["path"], args.threads)
        if what == "image":
            feed = {"pixel_values": px.numpy()}
            c["ort"] = best_of(args.repeats, lambda: sess.run(None, feed))
            lo = np.concatenate([sess.run(None, {"pixel_values": x})[0] for _, x in acc_px])
        else:
            c["ort"] = best_of(max(1, args.repeats - 1),
                               lambda: [sess.run(None, {"input_ids": b.numpy()}) for b in text_batches(texts)], warm_up=False)
            lo = np.concatenate([sess.run(None, {"input_ids": b.numpy()})[0] for b in text_batches(texts)])
        a[f"{what}_cos_min"], a[f"{what}_cos_mean"] = cosine_stats(acc_ref, lo)
        log(f"{what} encoder ORT int8 ({c['ort_file']}; {q['ops']}): {c['ort']:.3f} s, "
            f"cos to fp32 min {a[f'{what}_cos_min']:.6f}")
    except Exception as e:  # noqa: BLE001
        c["ort_error"] = f"{type(e).__name__}: {e}"[:500]
        a.setdefault("error", []).append(f"{what}: {c['ort_error']}")
        log(f"WARNING: ONNX Runtime int8 {what} case failed: {c['ort_error']}")


def fmt(v, w=9) -> str:
    return f"{v:{w}.3f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def print_table(res: dict) -> None:
    c = res["cases"]
    a = res.get("attn_implementation", {})
    print(f"reference: transformers {res['versions']['transformers']} / torch {res['versions']['torch']}"
          f" / onnxruntime {res['versions'].get('onnxruntime', '-')}; {res['threads']} threads;"
          f" attention: vision {a.get('vision')}, text {a.get('text')}")
    print(f"torch sgemm (ViT-B/16 layer shapes): {res['torch_sgemm_gflops']:.1f} GFLOP/s")
    if res.get("bf16"):
        b = res["bf16"]
        print(f"bf16 (autocast): mkldnn {b.get('mkldnn_available')}, bf16 supported {b.get('mkldnn_bf16_supported')}, "
              f"outputs {b.get('autocast_image_embeds_dtype')}, oneDNN Linear {b.get('onednn_bf16_linear')}, "
              f"matmul bf16 {b.get('matmul_bf16_gflops')} / fp32 {b.get('matmul_fp32_gflops')} GFLOP/s")
    if res.get("int8"):
        q = res["int8"]
        print(f"int8 (ORT {q.get('onnxruntime')} {q.get('quantization')}): "
              + "; ".join(f"{w} {q[w].get('ops')}" for w in ("image", "text") if isinstance(q.get(w), dict)))
    print(f"{'case':<48} {'torch s':>9} {'ORT s':>9}   details")
    for key in ("image", "text", "text_pad77", "segment_cold", "segment_warm", "pamr", "image_bf16", "text_bf16",
                "segment_cold_bf16", "segment_warm_bf16", "image_int8", "text_int8"):
        if key not in c:
            continue
        r = c[key]
        det = []
        for impl in ("sdpa", "eager"):
            if f"torch_{impl}" in r:
                det.append(f"{impl} {r[f'torch_{impl}']:.3f}")
        if "ort_max_abs_diff" in r:
            det.append(f"ORT max|diff| {r['ort_max_abs_diff']:.1e}")
        if "ort_error" in r:
            det.append("ORT failed")
        for part in ("text", "image", "window_encoder", "pamr", "post"):
            if part in r and key.startswith("segment"):
                det.append(f"{part} {r[part]:.3f}")
        print(f"{r['label']:<48} {fmt(r.get('torch'))} {fmt(r.get('ort'))}   {', '.join(det)}")
    for a in res.get("accuracy", []):
        f6 = lambda v: f"{v:.6f}" if isinstance(v, float) else "-"  # noqa: E731
        print(f"accuracy {a['peer']} vs PyTorch fp32: image cos min {f6(a.get('image_cos_min'))} mean "
              f"{f6(a.get('image_cos_mean'))} ({a.get('images')} images); text cos min {f6(a.get('text_cos_min'))} "
              f"mean {f6(a.get('text_cos_mean'))} ({a.get('texts')} prompts); labels (margin > {LABEL_MARGIN}) "
              f"{f6(a.get('label_agreement'))} of {a.get('margin_pixels') if a.get('margin_pixels') is not None else '-'} px, "
              f"all {f6(a.get('label_agreement_all'))} of {a.get('label_pixels') or '-'} px")
    for n in res.get("notes", []):
        print(f"note: {n}")
    print(f"load average: start {res['loadavg_start']}, end {res['loadavg_end']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="CLIP model directory in the Hugging Face layout")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="repeats per case (the best is reported)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--onnx-dir", help="keep (and reuse) the ONNX exports here (default: a temporary directory)")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--pad77", action="store_true", help="also time the text case padded to 77 tokens (slow)")
    ap.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                    help="ONNX exporter (auto: TorchScript at opset 17, the dynamo exporter if that fails)")
    ap.add_argument("--attn", choices=("auto", "sdpa", "eager"), default="auto",
                    help="PyTorch attention implementation (auto: time both, use the faster)")
    ap.add_argument("--precisions", default="fp32",
                    help="comma-separated, of fp32, bf16 (PyTorch autocast), int8 (ORT quantize_dynamic); "
                         "fp32 always runs (default: fp32)")
    ap.add_argument("--examples", default=os.path.join(REPO, "examples"),
                    help="the *.jpg / *.png of the accuracy figures (default: examples/ of this checkout)")
    args = ap.parse_args(argv)
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad or not wanted:
        ap.error(f"--precisions {args.precisions!r}: use a comma-separated list of {', '.join(PRECISIONS)}")
    args.precisions = [p for p in PRECISIONS if p in wanted or p == "fp32"]
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be at least 1")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        ap.error(f"--model {args.model}: no config.json (a Hugging Face CLIP directory is needed)")
    res = run(args)
    print_table(res)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
