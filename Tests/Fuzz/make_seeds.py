#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (Tests/Fuzz/TARGET/corpus/) from the test fixtures and
from small files made here (Python standard library only). Run from the repository root:

    python3 Tests/Fuzz/make_seeds.py

Seeds are small (a few KB each) so that the committed corpora stay well under a few MB."""
import hashlib, io, json, os, pickle, random, shutil, struct, sys, uuid, zipfile, collections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "Tests/ZeroSegTests/Fixtures")
FUZZ = os.path.join(ROOT, "Tests/Fuzz")


def corpus(target):
    d = os.path.join(FUZZ, target, "corpus")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def put(target_dir, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(target_dir, name), "wb") as f:
        f.write(data)


def copy(target_dir, path, max_bytes=20000):
    if os.path.getsize(path) <= max_bytes:
        shutil.copy(path, os.path.join(target_dir, os.path.basename(path)))


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)]."""
    header, off, data = {}, 0, b""
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


# -- safetensors
d = corpus("safetensors")
put(d, "empty_header", safetensors([]))
put(d, "f32_2x3", safetensors([("w", "F32", [2, 3], f32(range(6)))], {"format": "pt"}))
put(d, "mixed", safetensors([("a", "F16", [4], struct.pack("<4e", 1, -2, 0.5, 65504)),
                              ("b", "BF16", [2, 1], b"\x80\x3f\x00\xc0"),
                              ("c", "I64", [3], struct.pack("<3q", 1, -1, 2**40)),
                              ("d", "I32", [2], struct.pack("<2i", 7, -7)),
                              ("e", "F32", [], f32([3.5])),
                              ("z", "F32", [0, 5], b"")], {"zeroseg": "{\"a\":1}"}))
put(d, "unpadded", safetensors([("x", "F32", [1], f32([1]))], pad=False))

# -- zip (torch zip checkpoints and plain stored zips, zip64 too)
d = corpus("zip")
for f in ["state.pt", "state_pyzip.pt", "train_ckpt.pt", "bad_deflated.pt", "bad_torchscript.pt", "bad_offset.pt"]:
    copy(d, os.path.join(FIX, "checkpoints", f))
for name, kw in [("stored.zip", {}), ("zip64.zip", {"force": True})]:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=kw.get("force", False)) as f:
            f.write(pickle.dumps({"a": 1}, protocol=2))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", b"\0" * 16)
    put(d, name, b.getvalue())

# -- pickle (data.pkl of the checkpoints, the evil ones, and plain pickles of every protocol)
d = corpus("pickle")
for f in ["state.pt", "state_p4.pt", "train_ckpt.pt", "evil_eval.pt", "evil_global.pt", "evil_stack_global.pt", "bad_whole_module.pt"]:
    p = os.path.join(FIX, "checkpoints", f)
    try:
        with zipfile.ZipFile(p) as z:
            for n in z.namelist():
                if n.endswith("data.pkl"):
                    put(d, f.replace(".pt", ".pkl"), z.read(n))
    except zipfile.BadZipFile:
        pass
with open(os.path.join(FIX, "checkpoints", "state_legacy.pt"), "rb") as f:
    put(d, "legacy_stream", f.read()[:4000])
od = collections.OrderedDict([("x", 1), ("y", [1.5, None, True, b"ab", "s" * 300, 2**70, -(2**63)])])
for proto in range(0, 6):
    put(d, "plain_p%d" % proto, pickle.dumps({"k": od, "t": (1, (2, (3,))), "f": frozenset([1]), "n": [[]] * 3}, protocol=proto))

# -- torch checkpoints
d = corpus("torch")
for f in os.listdir(os.path.join(FIX, "checkpoints")):
    if f.endswith(".pt"):
        copy(d, os.path.join(FIX, "checkpoints", f))

# -- png / jpeg
d = corpus("png")
for f in sorted(os.listdir(os.path.join(FIX, "images/inputs"))):
    if f.endswith(".png") and not f.startswith("jpeg"):
        copy(d, os.path.join(FIX, "images/inputs", f), 13000)
d = corpus("jpeg")
for f in sorted(os.listdir(os.path.join(FIX, "images/inputs"))):
    if f.endswith(".jpg") and not f.startswith(("gif", "empty")):
        copy(d, os.path.join(FIX, "images/inputs", f), 14000)

# -- label maps and masks
d = corpus("labels")
for f in os.listdir(os.path.join(FIX, "eval/labels")):
    copy(d, os.path.join(FIX, "eval/labels", f))
for f in os.listdir(os.path.join(FIX, "twostage/masks")):
    shutil.copy(os.path.join(FIX, "twostage/masks", f), os.path.join(d, "mask_" + f))
copy(d, os.path.join(FIX, "images/inputs/png_interlaced_pal2_97x61.png"))

# -- tokenizer: a sample of the tokenizer corpus (ftfy cases, HTML entities, scripts, emoji)
d = corpus("tokenizer")
items = json.load(open(os.path.join(FIX, "tokenizer_corpus.json")))["items"]
rng = random.Random(0)
for i, it in enumerate(rng.sample(items, 60)):
    put(d, "t%02d" % i, it["text"])
put(d, "specials", "<start_of_text>a photo of a cat's toy<end_of_text> &amp;&lt; &#x1F600; don't")
put(d, "long", "a photo of a " * 40)

# -- classes
d = corpus("classes")
put(d, "simple", "road,car,pavement|sidewalk")
put(d, "background", "cat, dog|puppy\0sky,grass")
put(d, "file", "# classes\nroad\n\ncar|automobile\n  person | pedestrian  \r\nsky\n")
for f in os.listdir(os.path.join(ROOT, "classes")):
    with open(os.path.join(ROOT, "classes", f), "rb") as fh:
        put(d, f, fh.read()[:3000])

# -- prompt files for the tiny synthetic model (text width 32, embedding 24)
d = corpus("prompts")
W, P = 32, 24
def prompt_file(n_ctx, fmt="zeroseg-prompts-1", info=None):
    rnd = random.Random(n_ctx)
    t = [("ctx", "F32", [n_ctx, W], f32([rnd.uniform(-1, 1) for _ in range(n_ctx * W)])),
         ("adapter.weight", "F32", [P, P], f32([1.0 if i % (P + 1) == 0 else 0.0 for i in range(P * P)])),
         ("adapter.bias", "F32", [P], f32([0.0] * P)),
         ("logit_scale", "F32", [], f32([3.6888795]))]
    info = info if info is not None else {"model": {"source": "tiny", "fingerprint": "x"}, "seen": ["cat", "dog"]}
    return safetensors(t, {"format": fmt, "zeroseg": json.dumps(info)})
put(d, "linear4", prompt_file(4, info={"seen": ["cat", "dog"]}))
put(d, "linear1_fp", prompt_file(1))
put(d, "head2", prompt_file(2, "zeroseg-prompts-2", {"header": {"model": {"source": "tiny", "fingerprint": "x"}}, "seen": ["cat"],
                                                     "head_settings": {"head": "denseclip"}}))

# -- hub: the JSON files of a model folder, and HEAD answers
d = corpus("hub-config")
for f in ["checkpoints/micro/config.json", "checkpoints/openclip/config.json", "checkpoints/openclip/open_clip_config.json"]:
    copy(d, os.path.join(FIX, f))
    os.rename(os.path.join(d, os.path.basename(f)), os.path.join(d, f.replace("/", "_")))
put(d, "preprocessor_config.json", json.dumps({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                                                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.2, 0.2]}))
put(d, "tokenizer_config.json", json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}))
put(d, "open_clip_list_sizes.json", json.dumps({"model_cfg": {"embed_dim": 512, "quick_gelu": True,
    "vision_cfg": {"image_size": [224, 224], "patch_size": 16, "width": 768, "layers": 12, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "preprocess_cfg": {"mean": [0.48, 0.45, 0.40], "std": [0.26, 0.26, 0.27], "resize_mode": "shortest", "interpolation": "bicubic"}}))
d = corpus("hub-headers")
commit = "a" * 40
put(d, "lfs_redirect", "openai/clip-vit-base-patch16\n302\nX-Repo-Commit: %s\nX-Linked-Etag: \"%s\"\nX-Linked-Size: 598641023\n"
    "Location: https://cdn-lfs.huggingface.co/x\nHF_ENDPOINT=https://huggingface.co/\n%s" % (commit, "b" * 64, commit))
put(d, "small_file", "org/model@refs/pr/5\n200\nx-repo-commit: %s\netag: W/\"%s\"\ncontent-length: 512\nHF_TOKEN=hf_abc\n%s\n" % (commit, "c" * 40, commit))
put(d, "gated", "org/gated\n401\nX-Error-Code: GatedRepo\nX-Error-Message: Access restricted\n")
put(d, "missing", "org/model@v1.0\n404\nX-Error-Code: EntryNotFound\nX-Repo-Commit: %s\n" % commit)
put(d, "server_error", "org/model\n500\nX-Error-Message: upstream down\nHF_HUB_OFFLINE=1\nrefs\n")

# -- index: shard files (the fuzz target's pristine index has this id), database values, RLE masks
d = corpus("index")
INDEX_ID = uuid.UUID("00000000-0000-4000-8000-00000000f022")
def shard(kind, rows):
    h = b"ZSVF16\x00\x01" + struct.pack("<III", 4, kind, 0) + INDEX_ID.bytes
    h += b"\0" * (64 - len(h))
    return h + struct.pack("<%de" % (4 * len(rows)), *[v for r in rows for v in r])
put(d, "image_shard", b"\x00" + shard(0, [[1, 0, 0, 0], [0, 1, 0, 0]]))
put(d, "region_shard", b"\x01" + shard(1, [[0.5] * 4] * 3))
put(d, "db_rows", b"\x02shards.rows=1\nvectors.slot=7\nmeta.dim=4\n")
put(d, "db_meta", b"\x02meta.dim=-3\nmeta.regions=grid\nmeta.index_id=00000000-0000-4000-8000-00000000f022\nmeta.format=1\n")
put(d, "db_mask", b"\x02vectors.mask={\"width\":6,\"height\":4,\"counts\":[0,8,16]}\nvectors.x0=-1\nimages.width=0\n")
put(d, "rle", b"\x03{\"width\":3,\"height\":2,\"counts\":[1,2,3]}")

# -- multipart / JSON request bodies
d = corpus("multipart")
def mp(boundary, parts):
    out = b""
    for headers, body in parts:
        out += b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"
png = open(os.path.join(FIX, "images/inputs/png_gray1_33x21.png"), "rb").read()
put(d, "form", b"multipart/form-data; boundary=XyZ\n" + mp(b"XyZ", [
    ([b'Content-Disposition: form-data; name="classes"'], b"cat,dog|puppy"),
    ([b'Content-Disposition: form-data; name="short_side"'], b"336"),
    ([b'Content-Disposition: form-data; name="pamr"'], b"true"),
    ([b'Content-Disposition: form-data; name="image"; filename="a.png"', b"Content-Type: image/png"], png)]))
put(d, "form_quoted", b'multipart/form-data; boundary="a b"\n' + mp(b"a b", [([b'content-disposition: form-data; name=threshold'], b"0.5")]))
put(d, "json", b"application/json; charset=utf-8\n" + json.dumps({"classes": ["cat", "dog"], "k": 5, "exact": False,
    "image": "iVBORw0KGgo=", "x": None}).encode())
put(d, "other", b"text/plain\nhello")
print("seeds written under", FUZZ)
