#!/usr/bin/env python3
"""Make the PyTorch-checkpoint test fixtures of zeroseg into
Tests/ZeroSegTests/Fixtures/checkpoints/ (read by TorchCheckpointTests.swift).

    pip install -r scripts/reference/requirements.txt
    python scripts/reference/make_checkpoint_fixtures.py

Everything is seeded. Not byte-identical from run to run: state_legacy.pt (the legacy
format names storages by their memory address, str(storage._cdata)) and the last bits of
micro/micro_reference.json (transformers' float32 arithmetic); the zip archive name
torch.save derives from the file name. (openclip/ is byte-identical.) Nothing written here is ever *loaded* by Python: the malicious
pickles are assembled opcode by opcode and only disassembled (pickletools.dis never
executes anything).

Files (see also the README.md this script writes):
  state.pt             torch.save (zip, pickle protocol 2) of an OrderedDict exercising
                       f32/f16/bf16/i64/i32, a transposed view, tied tensors, a scalar,
                       storage offsets, zero strides, an empty tensor and a Parameter.
  state_p4.pt          the same with pickle_protocol=4 (FRAME, MEMOIZE, STACK_GLOBAL, ...).
  state_legacy.pt      the same with _use_new_zipfile_serialization=False (pre-1.6 format).
  state_pyzip.pt       state.pt re-packed by Python's zipfile (ZIP_STORED, no 64-byte
                       alignment: float32 data at odd offsets) with zip64 extra fields
                       forced into the central directory.
  state_expected.json  names, dtypes, shapes and row-major values of state*.pt.
  train_ckpt.pt        a training checkpoint {"epoch", "name", "state_dict", "optimizer"}.
  micro/               a micro transformers CLIPModel: pytorch_model.bin (torch.save of the
                       float32 state_dict), config.json, micro_reference.json (text and image
                       embeddings by transformers), micro_tensors.json (per-tensor checks).
  evil_*.pt, bad_*.pt  checkpoints that must be refused (see MALICIOUS below).
  openclip/            a small random open_clip CLIP in every file format, with open_clip's own
                       embeddings (made by make_openclip_fixtures.py; see its README.md).
"""
import collections
import io
import json
import os
import pickletools
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "checkpoints")
# A file that the malicious pickles would create if anything ever executed them.
MARKER = "/tmp/zeroseg_torchcheckpoint_pwned_marker"


# ----------------------------------------------------------------------------- (a) state dict

def state_dict():
    g = torch.Generator().manual_seed(1234)
    sd = collections.OrderedDict()
    sd["f32"] = (torch.arange(6, dtype=torch.float32) * 0.5 - 1.25).reshape(2, 3)
    sd["f16"] = torch.tensor([0.5, -1.25, 3.0, 65504.0, 2.0 ** -24], dtype=torch.float16)
    sd["bf16"] = torch.tensor([[1.0, -2.5], [0.0078125, 3.0e38]], dtype=torch.bfloat16)
    sd["i64"] = torch.tensor([-5, 0, 1 << 40, -(1 << 62)], dtype=torch.int64)
    sd["i32"] = torch.tensor([[7, -8], [2147483647, -2147483648]], dtype=torch.int32)
    base = torch.randn(3, 4, generator=g)
    sd["transposed"] = base.t()                     # [4, 3], strides (1, 4): copied by zeroseg
    f16base = torch.randn(2, 3, generator=g).half()
    sd["f16_transposed"] = f16base.t()              # non-contiguous f16
    tied = torch.randn(2, 2, generator=g)
    sd["tied_a"] = tied                             # the same tensor twice (tied weights)
    sd["tied_b"] = tied
    sd["tied_view"] = tied.view(4)                  # another view of the same storage
    sd["scalar"] = torch.tensor(2.5)
    big = torch.arange(20, dtype=torch.float32)
    sd["offset"] = big[5:11].view(2, 3)             # storage offset 5, contiguous
    sd["offset_strided"] = big[1::3]                # offset 1, stride 3
    sd["expanded"] = torch.tensor([7.0]).expand(2, 3)  # strides (0, 0)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.tensor([1.5, -0.5]), requires_grad=False)  # _rebuild_parameter
    return sd


def expected_json(sd):
    out = collections.OrderedDict()
    names = {}
    for k, t in sd.items():
        t = t.detach()
        dt = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32"}[t.dtype]
        flat = t.contiguous().reshape(-1)
        vals = flat.tolist() if dt in ("I64", "I32") else [float(v) for v in flat.float().tolist()]
        key = t.untyped_storage().data_ptr()
        out[k] = {"dtype": dt, "shape": list(t.shape), "stride": list(t.stride()),
                  "storage_offset": t.storage_offset(), "contiguous": t.is_contiguous(),
                  "values": vals, "storage_group": names.setdefault(key, len(names))}
    return out


# ----------------------------------------------------------------------------- zip helpers

def read_zip(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write_zip(path, entries, compress=()):
    """Entries in order with Python's zipfile (ZIP_STORED unless the name is in compress)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(zi, data)


def write_zip_forced_zip64(path, entries):
    """A minimal stored zip whose central directory puts every size and offset in a zip64
    extra field (0xFFFFFFFF in the 32-bit fields), with zip64 end records. Data is not aligned."""
    out = bytearray()
    central = bytearray()
    for name, data in entries:
        nb = name.encode()
        crc = zlib.crc32(data)
        off = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, len(data), len(data), len(nb), 0)
        out += nb + data
        extra = struct.pack("<HHQQQ", 0x0001, 24, len(data), len(data), off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc,
                               0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra), 0, 0, 0, 0, 0xFFFFFFFF)
        central += nb + extra
    cd_off = len(out)
    out += central
    z64_off = len(out)
    n = len(entries)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64_off, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


# ----------------------------------------------------------------------------- pickle assembler
# Opcodes written by hand so that the malicious files contain exactly what we say.

def P(n): return b"\x80" + bytes([n])
def U(s):  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b
def SU(s):  # SHORT_BINUNICODE (protocol 4)
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b
def G(mod, name): return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"
def I1(n): return b"K" + bytes([n])
MARK, TUPLE, TUPLE1, TUPLE2, REDUCE, STOP = b"(", b"t", b"\x85", b"\x86", b"R", b"."
EMPTY_TUPLE, EMPTY_DICT, SETITEM, STACK_GLOBAL, BINPERSID, NEWFALSE = b")", b"}", b"s", b"\x93", b"Q", b"\x89"


def ordered_dict():
    return G("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def tensor_pickle(offset, size, stride, numel):
    """{'weight': _rebuild_tensor_v2(storage('0', numel floats), offset, size, stride, False, OrderedDict())}"""
    def tup(xs):
        return MARK + b"".join(I1(x) for x in xs) + TUPLE
    pid = MARK + U("storage") + G("torch", "FloatStorage") + U("0") + U("cpu") + I1(numel) + TUPLE + BINPERSID
    return (P(2) + ordered_dict() + U("weight") + G("torch._utils", "_rebuild_tensor_v2")
            + MARK + pid + I1(offset) + tup(size) + tup(stride) + NEWFALSE + ordered_dict() + TUPLE + REDUCE
            + SETITEM + STOP)


def torch_entries(pkl, storages=(), archive="archive"):
    entries = [(f"{archive}/data.pkl", pkl), (f"{archive}/byteorder", b"little")]
    entries += [(f"{archive}/data/{i}", s) for i, s in enumerate(storages)]
    entries += [(f"{archive}/version", b"3\n"), (f"{archive}/.data/serialization_id", b"0" * 40)]
    return entries


MALICIOUS = collections.OrderedDict()


def make_malicious():
    touch = f"touch {MARKER}"
    # GLOBAL os.system, called by REDUCE as the value of a state-dict entry
    MALICIOUS["evil_global.pt"] = ("GLOBAL 'os system' + REDUCE('touch MARKER')",
        P(2) + EMPTY_DICT + U("weight") + G("os", "system") + U(touch) + TUPLE1 + REDUCE + SETITEM + STOP)
    # STACK_GLOBAL os.system (protocol 4)
    MALICIOUS["evil_stack_global.pt"] = ("STACK_GLOBAL ('os', 'system') + REDUCE('touch MARKER')",
        P(4) + EMPTY_DICT + SU("weight") + SU("os") + SU("system") + STACK_GLOBAL + SU(touch) + TUPLE1 + REDUCE
        + SETITEM + STOP)
    # builtins.eval
    MALICIOUS["evil_eval.pt"] = ("GLOBAL 'builtins eval' + REDUCE(\"__import__('os').system('touch MARKER')\")",
        P(2) + EMPTY_DICT + U("weight") + G("builtins", "eval") + U(f"__import__('os').system('{touch}')") + TUPLE1
        + REDUCE + SETITEM + STOP)
    # _rebuild_tensor_v2 with storage offset 10 in a 4-element storage
    MALICIOUS["bad_offset.pt"] = ("_rebuild_tensor_v2(storage of 4 floats, offset 10, size (2,), stride (1,))",
        tensor_pickle(10, (2,), (1,), 4))
    for name, (_, pkl) in MALICIOUS.items():
        storages = [struct.pack("<4f", 1, 2, 3, 4)] if name == "bad_offset.pt" else []
        write_zip(os.path.join(OUT, name), torch_entries(pkl, storages))


# ----------------------------------------------------------------------------- (b) micro CLIP

def make_micro():
    from transformers import CLIPConfig, CLIPModel
    import open_clip.tokenizer as oct

    d = os.path.join(OUT, "micro")
    os.makedirs(d, exist_ok=True)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=16,
                         vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32,
                           image_size=32, patch_size=16, hidden_act="gelu"),
        projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for mname, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
    sd = model.state_dict()
    assert all(t.dtype == torch.float32 for t in sd.values())
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))  # what transformers' torch.save path writes
    cfg.save_pretrained(d)

    tok = oct.SimpleTokenizer()
    texts = ["a photo of a cat.", "a dog"]
    ids = [[49406] + tok.encode(t) + [49407] for t in texts]
    text_embeds = []
    with torch.no_grad():
        for seq in ids:
            out = model.get_text_features(input_ids=torch.tensor([seq]))
            emb = out.pooler_output if hasattr(out, "pooler_output") else out
            text_embeds.append(emb[0].tolist())
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        out = model.get_image_features(pixel_values=pixels)
        image = (out.pooler_output if hasattr(out, "pooler_output") else out)[0].tolist()
    ref = collections.OrderedDict(
        texts=texts, token_ids=ids, text_embeds=text_embeds,
        pixel_values_shape=[1, 3, 32, 32], pixel_values=pixels.reshape(-1).tolist(), image_embeds=image,
        logit_scale=float(model.logit_scale), note="unnormalised get_text_features / get_image_features "
        "(projected pooled outputs) of transformers' CLIPModel in float32 on CPU; token ids by "
        "open_clip's SimpleTokenizer without padding")
    with open(os.path.join(d, "micro_reference.json"), "w") as f:
        json.dump(ref, f)
    tensors = collections.OrderedDict()
    for k, t in sd.items():
        flat = t.reshape(-1).double()
        tensors[k] = {"shape": list(t.shape), "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()),
                      "first": [float(x) for x in t.reshape(-1)[:4].tolist()]}
    with open(os.path.join(d, "micro_tensors.json"), "w") as f:
        json.dump(tensors, f, indent=1)


# ----------------------------------------------------------------------------- main

def dis(data):
    s = io.StringIO()
    pickletools.dis(data, s)
    return s.getvalue()


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    sd = state_dict()
    torch.save(sd, os.path.join(OUT, "state.pt"))
    torch.save(sd, os.path.join(OUT, "state_p4.pt"), pickle_protocol=4)
    torch.save(sd, os.path.join(OUT, "state_legacy.pt"), _use_new_zipfile_serialization=False)
    entries = read_zip(os.path.join(OUT, "state.pt"))
    write_zip_forced_zip64(os.path.join(OUT, "state_pyzip.pt"), entries)
    with open(os.path.join(OUT, "state_expected.json"), "w") as f:
        json.dump(expected_json(sd), f, indent=1)

    # A training checkpoint: model weights under "state_dict", plus optimizer state etc.
    torch.manual_seed(3)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save({"epoch": 3, "name": "run", "state_dict": lin.state_dict(), "optimizer": opt.state_dict()},
               os.path.join(OUT, "train_ckpt.pt"))
    with open(os.path.join(OUT, "train_ckpt_expected.json"), "w") as f:
        json.dump({k: {"shape": list(v.shape), "values": v.reshape(-1).tolist()} for k, v in lin.state_dict().items()}, f)

    make_malicious()
    # Refused for structural reasons:
    # truncated: the first 60% of state.pt (no end of central directory)
    with open(os.path.join(OUT, "state.pt"), "rb") as f:
        raw = f.read()
    with open(os.path.join(OUT, "bad_truncated.pt"), "wb") as f:
        f.write(raw[: len(raw) * 6 // 10])
    # deflated: state.pt's records re-packed with data.pkl compressed
    pkl_name = [n for n, _ in entries if n.endswith("/data.pkl")][0]
    write_zip(os.path.join(OUT, "bad_deflated.pt"), entries, compress={pkl_name})
    # big-endian byteorder record
    write_zip(os.path.join(OUT, "bad_bigendian.pt"),
              [(n, b"big" if n.endswith("/byteorder") else d) for n, d in entries])
    # a whole nn.Module (torch.save(model)), and a TorchScript archive
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(2, 2), os.path.join(OUT, "bad_whole_module.pt"))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), os.path.join(OUT, "bad_torchscript.pt"))

    make_micro()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_openclip_fixtures
    make_openclip_fixtures.make(os.path.join(OUT, "openclip"))
    write_readme(entries)


def write_readme(entries):
    import transformers
    files = sorted(os.path.relpath(os.path.join(dp, f), OUT) for dp, _, fs in os.walk(OUT) for f in fs)
    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in files}
    lines = [
        "# PyTorch checkpoint fixtures",
        "",
        "Made by `scripts/reference/make_checkpoint_fixtures.py` (run from anywhere; rewrites this folder) with",
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "Read by `Tests/ZeroSegTests/TorchCheckpointTests.swift`.",
        "",
        "| file | bytes | what |",
        "|---|---:|---|",
    ]
    what = {
        "state.pt": "torch.save (zip, protocol 2) of an OrderedDict: f32/f16/bf16/i64/i32, transposed views, "
                    "tied tensors, scalar, storage offsets, zero strides, empty tensor, a Parameter",
        "state_p4.pt": "same, `pickle_protocol=4`",
        "state_legacy.pt": "same, `_use_new_zipfile_serialization=False` (legacy pre-1.6 format)",
        "state_pyzip.pt": "state.pt's records re-packed unaligned, zip64 extras in the central directory",
        "state_expected.json": "expected dtype/shape/row-major values of state*.pt",
        "train_ckpt.pt": "training checkpoint: epoch, name, state_dict (nn.Linear(3, 2)), AdamW optimizer state",
        "train_ckpt_expected.json": "expected tensors of train_ckpt.pt's state_dict",
        "bad_truncated.pt": "first 60% of state.pt (refused: no end of central directory)",
        "bad_deflated.pt": "state.pt's records with data.pkl deflate-compressed (refused)",
        "bad_bigendian.pt": "state.pt with byteorder = big (refused)",
        "bad_whole_module.pt": "torch.save(nn.Linear(2, 2)): a pickled module object (refused)",
        "bad_torchscript.pt": "torch.jit.save of a scripted nn.Linear (refused)",
        "micro/pytorch_model.bin": "torch.save(CLIPModel.state_dict()) of a micro transformers CLIPModel (float32)",
        "micro/config.json": "its config (CLIPConfig.save_pretrained)",
        "micro/micro_reference.json": "transformers' unnormalised text/image embeddings for 2 texts and a seeded pixel tensor",
        "micro/micro_tensors.json": "per-tensor shape, sum, abs sum and first values of the micro state dict",
    }
    for k, (desc, _) in MALICIOUS.items():
        what[k] = f"hand-assembled data.pkl: {desc} (refused)"
    for f in files:
        if f == "README.md" or f.startswith("openclip" + os.sep):
            continue
        lines.append(f"| `{f}` | {sizes[f]} | {what.get(f, '')} |")
    lines += [
        "",
        "`openclip/` (made by `scripts/reference/make_openclip_fixtures.py`, called from this script; read by",
        "`Tests/ZeroSegTests/OpenCLIPTests.swift`): a small random open_clip CLIP in every file format and open_clip's",
        "own embeddings; see `openclip/README.md`.",
        "",
        f"MARKER = `{MARKER}`: the file the malicious pickles would create if they were ever executed",
        "(the tests check it does not exist). The malicious pickles were never loaded by Python;",
        "their disassembly (pickletools.dis, which executes nothing):",
        "",
    ]
    for k, (_, pkl) in MALICIOUS.items():
        lines += [f"### {k}", "", "```", dis(pkl).rstrip(), "```", ""]
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
