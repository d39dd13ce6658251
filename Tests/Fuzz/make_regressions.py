#!/usr/bin/env python3
"""Writes the regression inputs found while fuzzing that are easier to read as code than as bytes
(Tests/Fuzz/TARGET/regressions/). Inputs libFuzzer found are committed as it wrote them. Each file
is replayed by scripts/fuzz.sh and fed to the library by Tests/ZeroSegTests/FuzzRegressionTests.swift."""
import io, json, os, pickle, struct, sys, types, zipfile

FUZZ = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(FUZZ, target, "regressions")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)

# safetensors: a shape whose element count fits in Int but whose byte count does not.
h = json.dumps({"x": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}}).encode()
put("safetensors", "shape-bytes-overflow", struct.pack("<Q", len(h)) + h)

# torch: an empty tensor (shape (0,)) at storage offset 2^62 (torch.save writes such a file).
torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch; sys.modules["torch._utils"] = utils
class FloatStorage: pass
FloatStorage.__module__ = "torch"; torch.FloatStorage = FloatStorage
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2; torch._utils = utils
class Storage: pass
class Tensor:
    def __reduce__(self):
        return (_rebuild_tensor_v2, (Storage(), 2**62, (0,), (1,), False, {}))
class P(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", FloatStorage, "0", "cpu", 4) if isinstance(obj, Storage) else None
b = io.BytesIO(); P(b, protocol=2).dump({"empty": Tensor()})
z = io.BytesIO()
with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
    f.writestr("archive/data.pkl", b.getvalue())
    f.writestr("archive/byteorder", "little")
    f.writestr("archive/data/0", b"\0" * 16)
put("torch", "empty-tensor-huge-offset", z.getvalue())

# open_clip_config.json: an mlp_ratio whose width x ratio is no integer.
put("hub-config", "mlp-ratio-overflow", json.dumps({"model_cfg": {"embed_dim": 512,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, "mlp_ratio": 1e300},
    "text_cfg": {"width": 512, "heads": 8, "layers": 12}}}))

# index: damaged database values (see the index fuzz target: mode byte 2, then name=value lines).
put("index", "negative-shard-rows", b"\x02shards.rows=-1\n")
put("index", "huge-dim", b"\x02meta.dim=4611686018427387904\n")
put("index", "negative-mask-run", b"\x02vectors.mask={\"width\":6,\"height\":4,\"counts\":[0,-8,40]}\n")
put("index", "mask-not-json", b"\x02vectors.mask=[1,2\n")
put("index", "rle-negative-run", b"\x03{\"width\":3,\"height\":2,\"counts\":[4,-3,5]}")
print("regressions written")
