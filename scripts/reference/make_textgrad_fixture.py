#!/usr/bin/env python3
"""Reference gradients of the frozen CLIP text encoder with respect to its input embeddings (CoOp
prompt learning), on the tiny synthetic model, for Tests/ZeroSegTests/TextBackwardTests.swift.

CoOp prompt for a class: [start] ctx_1..ctx_N [BPE ids of "name."] [end], with the ids made by
open_clip's tokenizer from "X X X X name." (the ctx positions hold the id of "X", which CoOp then
replaces by the learned context vectors). The N context vectors are shared by all classes.

For each case (the text MLP activation: the model's own quick_gelu, then gelu (erf) and
gelu_pytorch_tanh swapped into the same weights), with transformers' CLIPModel (float32, eager
attention):
  inputs_embeds_i = token_embedding(ids_i) with rows 1..N replaced by ctx, + position_embedding
  x = text encoder layers (additive causal mask), final_layer_norm, row of the end token
  e_i = text_projection(x)                                        (not normalised)
  loss = sum_i dot(e_i / |e_i|, g_i)                              (g_i fixed seeded vectors)
and torch autograd gives d loss / d inputs_embeds_i, d loss / d ctx (per prompt and summed).

Writes OUT/reference.safetensors (default Tests/ZeroSegTests/Fixtures/textgrad) and OUT/README.md:
  prompt.K.ids                 I64 [T_K]      token ids (open_clip.tokenize, padding removed)
  context                      F32 [N, W]     the shared context vectors
  upstream                     F32 [B, P]     g_i
  prompt.K.inputs              F32 [T_K, W]   inputs_embeds (the same in every case)
  <case>.embeddings            F32 [B, P]     e_i
  <case>.grad_embeddings       F32 [B, P]     d loss / d e_i
  <case>.prompt.K.grad_inputs  F32 [T_K, W]   d loss / d inputs_embeds_K
  <case>.grad_context          F32 [B, N, W]  d loss / d ctx through prompt i alone
  <case>.grad_context_sum      F32 [N, W]     d loss / d ctx (the CoOp gradient)
  metadata (JSON strings): generator, versions, model, names, context_length, pool, seeds, cases,
  checks (float32 vs float64 autograd, manual forward vs transformers' own text model)

CLI:  python scripts/reference/make_textgrad_fixture.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import dump_stages  # noqa: E402
import synth  # noqa: E402

GENERATOR_NAME = "scripts/reference/make_textgrad_fixture.py"
GENERATOR_VERSION = "zeroseg-textgrad-fixture-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "textgrad")

NAMES = ["cat", "traffic light", "sofa"]
N_CTX = 4
CONTEXT_SEED = 2024
UPSTREAM_SEED = 7
CONTEXT_LENGTH = 77
EOT = 49407
CASES = ["quick_gelu", "gelu", "gelu_pytorch_tanh"]


def prompt_ids(name: str, n: int) -> list:
    import open_clip
    ids = open_clip.tokenize(["X " * n + name + "."], context_length=CONTEXT_LENGTH)[0].tolist()
    x = open_clip.tokenize(["X"], context_length=CONTEXT_LENGTH)[0].tolist()
    assert x[2] == EOT, "X is not one BPE token"
    end = ids.index(EOT)
    assert end < CONTEXT_LENGTH - 1, "prompt too long (open_clip would truncate it)"
    ids = ids[: end + 1]
    assert ids[1 : 1 + n] == [x[1]] * n, (ids, x)
    return ids


def causal_mask(t: int, dtype) -> torch.Tensor:
    m = torch.full((t, t), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return m[None, None]


def encode_embeds(model, x0: torch.Tensor, pool: int) -> torch.Tensor:
    """x0 [1, T, W] -> projected embedding [P] (the end-token row), as CLIPTextTransformer does."""
    tm = model.text_model
    x = x0
    mask = causal_mask(x0.shape[1], x0.dtype)
    for layer in tm.encoder.layers:
        x = layer(x, mask)
        x = x[0] if isinstance(x, tuple) else x
    x = tm.final_layer_norm(x)
    return model.text_projection(x[0, pool])


def set_activation(model, act: str) -> None:
    from transformers.activations import ACT2FN
    for layer in model.text_model.encoder.layers:
        layer.mlp.activation_fn = ACT2FN[act]


def run_case(model, ids_list, ctx0, upstream):
    """Forward + autograd for all prompts; returns tensors (float of the model's dtype)."""
    tm = model.text_model
    tok = tm.embeddings.token_embedding.weight.detach()
    pos = tm.embeddings.position_embedding.weight.detach()
    ctx = ctx0.to(tok.dtype).clone().requires_grad_(True)
    inputs, embeds, pools = [], [], []
    for ids in ids_list:
        t = len(ids)
        base = tok[torch.tensor(ids)]
        x0 = torch.cat([base[:1], ctx, base[1 + N_CTX:]], 0) + pos[:t]
        x0 = x0[None]
        x0.retain_grad()
        pool = ids.index(EOT)
        inputs.append(x0)
        embeds.append(encode_embeds(model, x0, pool))
        pools.append(pool)
    e = torch.stack(embeds)
    e.retain_grad()
    loss = ((e / e.norm(dim=-1, keepdim=True)) * upstream.to(e.dtype)).sum()
    loss.backward()
    # ctx gradient through each prompt alone: rows 1..N of that prompt's input gradient
    per_prompt = torch.stack([x.grad[0, 1 : 1 + N_CTX] for x in inputs])
    assert torch.allclose(per_prompt.sum(0), ctx.grad, rtol=1e-5, atol=1e-7)
    return {
        "inputs": [x.detach()[0] for x in inputs],
        "grad_inputs": [x.grad[0] for x in inputs],
        "embeddings": e.detach(),
        "grad_embeddings": e.grad,
        "grad_context": per_prompt,
        "grad_context_sum": ctx.grad,
        "loss": float(loss.detach()),
        "pools": pools,
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ids_list = [prompt_ids(n, N_CTX) for n in NAMES]
    tensors: dict = {}
    checks: dict = {}
    with tempfile.TemporaryDirectory(prefix="zeroseg-textgrad-tiny.") as tmp:
        synth.write_checkpoint("tiny", 0, tmp)
        model = dump_stages.load_model(tmp)  # float32, eager attention, strict
        model64 = dump_stages.load_model(tmp).double()
        tcfg = model.config.text_config
        assert tcfg.hidden_act == CASES[0], tcfg.hidden_act
        w, p = tcfg.hidden_size, model.config.projection_dim
        tok = model.text_model.embeddings.token_embedding.weight.detach()
        g = torch.Generator().manual_seed(CONTEXT_SEED)
        # CoOp initialises ctx from N(0, 0.02); here: the token embeddings' standard deviation
        ctx = (torch.randn(N_CTX, w, generator=g, dtype=torch.float64) * float(tok.std())).to(torch.float32)
        g = torch.Generator().manual_seed(UPSTREAM_SEED)
        upstream = torch.randn(len(NAMES), p, generator=g, dtype=torch.float64).to(torch.float32)

        # the manual forward equals transformers' own text model on plain ids
        with torch.no_grad():
            for k, ids in enumerate(ids_list):
                t = torch.tensor([ids])
                hf = model.get_text_features(input_ids=t)
                hf = hf.pooler_output if hasattr(hf, "pooler_output") else hf
                x0 = model.text_model.embeddings(input_ids=t)
                mine = encode_embeds(model, x0, ids.index(EOT))
                checks[f"manual forward == get_text_features (prompt {k}, plain ids)"] = float((mine - hf[0]).abs().max())

        tensors["context"] = ctx
        tensors["upstream"] = upstream
        for k, ids in enumerate(ids_list):
            tensors[f"prompt.{k}.ids"] = torch.tensor(ids, dtype=torch.int64)
        for case in CASES:
            set_activation(model, case)
            set_activation(model64, case)
            r = run_case(model, ids_list, ctx, upstream)
            r64 = run_case(model64, ids_list, ctx.double(), upstream)
            for k in range(len(NAMES)):
                if case == CASES[0]:
                    tensors[f"prompt.{k}.inputs"] = r["inputs"][k]
                assert torch.equal(tensors[f"prompt.{k}.inputs"], r["inputs"][k])
                tensors[f"{case}.prompt.{k}.grad_inputs"] = r["grad_inputs"][k]
                checks[f"{case}: float32 vs float64 grad_inputs {k} (relative L2)"] = rel(r["grad_inputs"][k], r64["grad_inputs"][k])
            for name in ("embeddings", "grad_embeddings", "grad_context", "grad_context_sum"):
                tensors[f"{case}.{name}"] = r[name]
                checks[f"{case}: float32 vs float64 {name} (relative L2)"] = rel(r[name], r64[name])
            checks[f"{case}: loss"] = r["loss"]
        pools = r["pools"]

    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype == (torch.int64 if k.endswith(".ids") else torch.float32), k
    for k, v in checks.items():
        if "loss" not in k:
            assert v < 1e-4, (k, v)
    meta = {
        "generator": {"script": GENERATOR_NAME, "version": GENERATOR_VERSION},
        "versions": dump_stages.versions(),
        "model": {"arch": "tiny", "seed": 0, "init": f"{synth.GENERATOR_NAME} ({synth.GENERATOR_VERSION})",
                  "attn_implementation": "eager", "dtype": "float32"},
        "names": NAMES,
        "context_length": N_CTX,
        "prompt_text": "'X ' * context_length + name + '.', open_clip.tokenize",
        "pool": pools,
        "seeds": {"context": f"torch.randn(N, W, Generator().manual_seed({CONTEXT_SEED}), float64) * token_embedding.std()",
                  "upstream": f"torch.randn(B, P, Generator().manual_seed({UPSTREAM_SEED}), float64)"},
        "loss": "sum_i dot(e_i / |e_i|, upstream_i)",
        "cases": CASES,
        "torch_num_threads": args.threads,
        "checks": checks,
    }
    from safetensors.torch import save_file
    path = os.path.join(args.out, "reference.safetensors")
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)
    v = meta["versions"]
    lines = [
        "# text-encoder gradient reference (tiny model, CoOp prompts)",
        "",
        f"`reference.safetensors` was made by `{GENERATOR_NAME}` ({GENERATOR_VERSION}) on the synthetic tiny CLIP "
        f"(`synth.py`, seed 0; width {w}, 2 layers, projection {p}) with transformers' CLIPModel (float32, eager "
        f"attention) and torch autograd; python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
        f"open_clip_torch {v['open_clip_torch']}, safetensors {v['safetensors']}.",
        "",
        "Regenerate (from the repo root): `pip install -r scripts/reference/requirements.txt && "
        "python scripts/reference/make_textgrad_fixture.py`.",
        "",
        f"Prompts: {N_CTX} shared context vectors, then \"name.\", for {', '.join(repr(n) for n in NAMES)}: token ids "
        f"from `open_clip.tokenize(\"X X X X name.\")` (`prompt.K.ids`; the ctx rows of the input embeddings replace "
        f"the \"X\" tokens). Loss = sum_i dot(e_i / |e_i|, upstream_i) with e_i the projected (not normalised) "
        f"embedding at the end token. Cases: the text MLP activation ({', '.join(CASES)}; the model's own is "
        f"{CASES[0]}, the others are swapped into the same weights).",
        "",
        "Tensors and metadata: see the docstring of the script. `TextBackwardTests` compares ids, inputs, "
        "embeddings and gradients (tolerances in the test).",
        "",
        "Checks made by the script (relative L2 of float32 autograd against float64 autograd; max abs of the "
        "manual forward against transformers' `get_text_features`):",
        "",
    ] + [f"- {k}: {val:.3g}" for k, val in checks.items()] + [
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
    ] + [f"| `{k}` | {str(t.dtype).replace('torch.', '')} | {list(t.shape)} |" for k, t in sorted(tensors.items())]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for k, val in checks.items():
        print(f"  {k}: {val:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
