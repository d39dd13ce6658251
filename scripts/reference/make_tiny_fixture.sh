#!/usr/bin/env bash
# Regenerate Tests/ZeroSegTests/Fixtures/tiny/{stages.safetensors,README.md}.
# The tiny model weights are NOT kept: the Swift tests regenerate them with the
# Swift port of synth.py's RNG (arch "tiny", seed 0).
# Usage: scripts/reference/make_tiny_fixture.sh   (from anywhere; python = $PYTHON or python3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
FIX="$ROOT/Tests/ZeroSegTests/Fixtures/tiny"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/zeroseg-tiny.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

mkdir -p "$FIX"
"$PY" "$HERE/synth.py" --arch tiny --seed 0 --out "$TMP/model" > "$TMP/probe.json"
"$PY" "$HERE/dump_stages.py" --model "$TMP/model" --out "$FIX/stages.safetensors" --interp 80x112
chmod 644 "$FIX/stages.safetensors"

"$PY" - "$FIX" "$TMP/probe.json" <<'PYEOF'
import json, os, sys
from safetensors import safe_open
fix, probe_path = sys.argv[1], sys.argv[2]
path = os.path.join(fix, "stages.safetensors")
with safe_open(path, "pt") as f:
    meta = {k: json.loads(v) for k, v in f.metadata().items()}
    names = list(f.keys())
    shapes = {k: (str(f.get_slice(k).get_dtype()), f.get_slice(k).get_shape()) for k in names}
probe = meta["probe"]["tensors"]
v = meta["versions"]
lines = [
    "# tiny CLIP reference stages",
    "",
    "`stages.safetensors` holds transformers' activations for the synthetic **tiny** CLIP",
    "(arch `tiny`, seed 0) built by `scripts/reference/synth.py`. The weights are not stored here:",
    "the Swift tests regenerate them bit-for-bit with the Swift port of the same RNG (spec in synth.py).",
    "",
    "Regenerate (from the repo root, with the pinned `scripts/reference/requirements.txt`):",
    "",
    "```sh",
    "pip install -r scripts/reference/requirements.txt",
    "scripts/reference/make_tiny_fixture.sh",
    "# = python scripts/reference/synth.py --arch tiny --seed 0 --out $TMP/model",
    "#   python scripts/reference/dump_stages.py --model $TMP/model --out Tests/ZeroSegTests/Fixtures/tiny/stages.safetensors --interp 80x112",
    "```",
    "",
    f"Made by `{meta['generator']['script']}` ({meta['generator']['version']}), weights by "
    f"`{meta['init']}`; python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
    f"open_clip_torch {v['open_clip_torch']}, safetensors {v['safetensors']}, numpy {v['numpy']}; "
    f"attn_implementation={meta['attn_implementation']}, torch threads={meta['torch_num_threads']}.",
    "",
    "Every `__metadata__` value is a JSON-encoded string (generator, versions, arch, seed, init, texts,",
    "pixel_values, interp_hw, hidden_states_0, probe, checks, model_config).",
    "",
    "hidden_states conventions (transformers): " + "; ".join(f"{k}: {s}" for k, s in meta["hidden_states_0"].items()) + ".",
    "",
    "## RNG probe (tiny, seed 0, first 8 values)",
    "",
]
for name, p in probe.items():
    lines.append(f"- `{name}` (fnv1a64 {p['fnv1a64']}, a={p['amplitude']}, c={p['offset']}):")
    lines.append("  - hex: " + " ".join(p["hex"]))
    lines.append("  - dec: " + " ".join(p["values"]))
lines += ["", "## Texts", ""] + [f"{i}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(meta["texts"])]
lines += ["", "## Tensors", "", "| name | dtype | shape |", "|---|---|---|"]
lines += [f"| `{k}` | {d} | {s} |" for k, (d, s) in shapes.items()]
open(os.path.join(fix, "README.md"), "w").write("\n".join(lines) + "\n")
print(f"wrote {path} ({os.path.getsize(path)} bytes) and README.md")
PYEOF
