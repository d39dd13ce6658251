#!/usr/bin/env python3
"""Brute-force reference for exact search of the embedding index (issue 14): writes
Tests/ZeroSegTests/Fixtures/index/exact_topk.json, read by the Swift index tests.

    python scripts/reference/make_index_fixture.py [--out FILE]     # from the repo root; numpy only

The collection and the queries are not stored: they come from a formula the Swift test reproduces
(all integer arithmetic on uint64, wrapping mod 2^64):

    mix(u):  z = u + 0x9E3779B97F4A7C15
             z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
             z = (z ^ (z >> 27)) * 0x94D049BB133111EB
             return z ^ (z >> 31)                                  (the SplitMix64 step on state u)
    element e (flat row-major index into [n, d]) of the set with seed s:
             x = mix(s * 2^32 + e);  m = x >> 40                   (24 bits)
             value = ((m * 2^-24) * 2 - 1) * 2^-4  =  (m - 2^23) * 2^-27
             (exact in float32, in [-1/16, 1/16))

  collection  n = 20000, d = 512, seed 1, stored by the index as float16 (round to nearest even from
              the float32 value); vector i gets position i
  queries     16 x 512, seed 2, float32 (not quantised)
  deletions   after adding all 20000, the vectors with i % 7 == 3 are removed

Expected results: for each query, the top k of the remaining vectors by
score_i = sum_j float64(f16(v_ij)) * float64(q_j) (float64 numpy), best first, ties broken by the
lower index (the script asserts there are none that matter: the k-th and (k+1)-th scores differ by
more than 1e-6, adjacent scores of a reported list by more than 2e-7 (the smallest such gap, 7.5e-7,
is in query 10; float32 scores of these sets are off by < 1e-7), and no id repeats).
Written: k = 20 for the 16 queries with the deletions ("queries") and without ("all"); k = 1 and k = 100 for queries 0 and 1,
with and without the deletions ("extra"). The JSON also holds spot values of the generator (raw x,
float32 value and bits, float16 bits) and exact checksums of both sets (sums of multiples of 2^-24 /
2^-27 small enough to be exact in float64 in any order), so the Swift side can check its generator
first. The script also recomputes every score exactly in int64 (score * 2^51) and checks the order.

The Swift test compares the ids exactly and the scores to 1e-5 (absolute).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GENERATOR_NAME = "scripts/reference/make_index_fixture.py"
GENERATOR_VERSION = "zeroseg-index-fixture-1"
DEFAULT_OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "index", "exact_topk.json")

N, D, COLLECTION_SEED = 20000, 512, 1
Q, QUERY_SEED = 16, 2
DELETED_MOD = (7, 3)
K = 20
EXTRA = [(0, 1), (0, 100), (1, 1), (1, 100)]  # (query, k)
BOUNDARY_GAP = 1e-6  # k-th vs (k+1)-th score
# adjacent scores inside a list: the order is compared exactly, so a float32 score computation must not
# swap them; float32 dot products of these sets are off by at most ~1e-7 (measured below, "float32_max_abs_error")
ORDER_GAP = 2e-7

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


def mix(u: np.ndarray) -> np.ndarray:
    """SplitMix64 step on uint64 states (wrap-around: numpy uint64 array arithmetic is modular)."""
    u = np.asarray(u, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = u + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        return z ^ (z >> np.uint64(31))


def raw(seed: int, count: int) -> np.ndarray:
    """x = mix(seed * 2^32 + e) for e in 0..<count."""
    e = np.arange(count, dtype=np.uint64)
    return mix(np.uint64(seed << 32) + e)


def values(seed: int, n: int, d: int) -> np.ndarray:
    """The float32 [n, d] set of `seed`: ((x >> 40) * 2^-24 * 2 - 1) * 2^-4."""
    m = (raw(seed, n * d) >> np.uint64(40)).astype(np.float64)
    v = (m * 2.0 ** -24 * 2 - 1) * 2.0 ** -4
    v32 = v.astype(np.float32)
    assert np.array_equal(v32.astype(np.float64), v), "generator values not exact in float32"
    return v32.reshape(n, d)


def top_k(scores: np.ndarray, exact: np.ndarray, ids: np.ndarray, k: int) -> tuple:
    """Best k (score descending, lower id first on ties) of scores over ids; checks the gaps: the k-th
    and (k+1)-th score differ by more than BOUNDARY_GAP, adjacent scores of the list by more than
    ORDER_GAP, and no id repeats. Returns ids, scores, the boundary gap and the smallest in-list gap."""
    order = np.lexsort((ids, -scores))  # last key primary: -score, then id
    s, i = scores[order], ids[order]
    assert np.array_equal(order[:k], np.lexsort((ids, -exact))[:k]), "float64 and exact integer orders differ"
    assert len(set(i[:k].tolist())) == k, "duplicate id in the top k"
    boundary = float(s[k - 1] - s[k]) if len(s) > k else None
    assert boundary is None or boundary > BOUNDARY_GAP, f"k-th and (k+1)-th scores within {BOUNDARY_GAP}: {boundary:.3g}"
    inner = float((-np.diff(s[:k])).min()) if k > 1 else None
    assert inner is None or inner > ORDER_GAP, f"adjacent scores in the top {k} within {ORDER_GAP}: {inner:.3g}"
    return i[:k], s[:k], boundary, inner


def result(qi: int, k: int, scores: np.ndarray, exact: np.ndarray, ids: np.ndarray, gaps: dict) -> dict:
    i, s, boundary, inner = top_k(scores, exact, ids, k)
    for name, g in (("boundary", boundary), ("in_list", inner)):
        if g is not None:
            gaps[name] = min(gaps.get(name, g), g)
    return {"query": qi, "k": k, "ids": [int(x) for x in i], "scores": [float(x) for x in s]}


def spot(seed: int, e: int, x: np.ndarray, v32: np.ndarray, with_f16: bool) -> dict:
    f = v32.reshape(-1)[e]
    out = {"set_seed": seed, "element": e, "x_hex": f"0x{int(x[e]):016x}", "m": int(x[e] >> np.uint64(40)),
           "float32": float(f), "float32_bits": int(np.float32(f).view(np.uint32))}
    if with_f16:
        h = np.float16(f)
        out["float16"] = float(h)
        out["float16_bits"] = int(h.view(np.uint16))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    coll32 = values(COLLECTION_SEED, N, D)
    coll16 = coll32.astype(np.float16)
    queries = values(QUERY_SEED, Q, D)
    # float16 * float32 products are exact in float64; the 512-term sums round in float64 only.
    scores = coll16.astype(np.float64) @ queries.astype(np.float64).T  # [N, Q]
    # Check: the same scores exactly, in integers. f16 values are multiples of 2^-24 (|v| <= 2^-4), the
    # queries' of 2^-27: score * 2^51 = sum of 512 integer products below 2^43, exact in int64.
    ci = (coll16.astype(np.float64) * 2.0 ** 24).astype(np.int64)
    qi_ = (queries.astype(np.float64) * 2.0 ** 27).astype(np.int64)
    assert np.array_equal(ci * 2.0 ** -24, coll16.astype(np.float64))
    assert np.array_equal(qi_ * 2.0 ** -27, queries.astype(np.float64))
    exact = ci @ qi_.T  # [N, Q], score * 2^51
    assert np.abs(exact * 2.0 ** -51 - scores).max() < 1e-15
    all_ids = np.arange(N, dtype=np.int64)
    keep = all_ids % DELETED_MOD[0] != DELETED_MOD[1]
    kept_ids = all_ids[keep]

    gaps: dict = {}
    res = {"queries": [], "all": [], "extra": []}
    for qi in range(Q):
        res["queries"].append(result(qi, K, scores[keep, qi], exact[keep, qi], kept_ids, gaps))
        res["all"].append(result(qi, K, scores[:, qi], exact[:, qi], all_ids, gaps))
    for qi, k in EXTRA:
        res["extra"].append(dict(result(qi, k, scores[keep, qi], exact[keep, qi], kept_ids, gaps), deletions=True))
        res["extra"].append(dict(result(qi, k, scores[:, qi], exact[:, qi], all_ids, gaps), deletions=False))
    craw, qraw = raw(COLLECTION_SEED, N * D), raw(QUERY_SEED, Q * D)
    # Exact checksums: every float16 value is a multiple of 2^-24 and |sum| < 2^20 (44 bits), every
    # query value a multiple of 2^-27 and |sum| < 2^9 (36 bits): float64 sums exact in any order.
    checks = {
        "collection_float16_sum": float(coll16.astype(np.float64).sum()),
        "collection_float16_bits_sum": int(coll16.view(np.uint16).astype(np.int64).sum()),
        "collection_float32_sum": float(coll32.astype(np.float64).sum()),
        "queries_float32_sum": float(queries.astype(np.float64).sum()),
        "collection_float16_changed": int((coll16.astype(np.float32) != coll32).sum()),
        # information only (depends on the BLAS's summation order): float32 scores vs the float64 ones
        "float32_max_abs_error": float(np.abs((coll16.astype(np.float32) @ queries.T).astype(np.float64) - scores).max()),
    }
    doc = {
        "generator": {
            "name": GENERATOR_NAME, "version": GENERATOR_VERSION, "numpy": np.__version__,
            "mix": "SplitMix64 step, uint64 wrap-around: z = u + 0x9E3779B97F4A7C15; "
                   "z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB; "
                   "return z ^ (z >> 31)",
            "element": "element e (flat row-major index into [n, d]) of the set with seed s: x = mix(s * 2^32 + e); "
                       "value = ((x >> 40) * 2^-24 * 2 - 1) * scale = ((x >> 40) - 2^23) * 2^-27, exact in float32",
            "scale": 2.0 ** -4,
            "collection": {"n": N, "d": D, "seed": COLLECTION_SEED, "stored_as": "float16 (round to nearest even)",
                           "position": "vector i gets position i"},
            "queries": {"n": Q, "d": D, "seed": QUERY_SEED, "stored_as": "float32"},
            "score": "sum_j float64(f16(v_ij)) * float64(q_j), float64; best first, ties by lower id "
                     f"(none that matter: k-th vs (k+1)-th score gap > {BOUNDARY_GAP}, adjacent scores within a "
                     f"list > {ORDER_GAP} apart)",
            "tolerance": {"ids": "exact", "scores_abs": 1e-5},
        },
        "deleted_mod": list(DELETED_MOD),
        "remaining": int(keep.sum()),
        "k": K,
        "queries": res["queries"],
        "all": res["all"],
        "extra": res["extra"],
        "min_gaps": gaps,
        "spot": {
            "collection": [spot(COLLECTION_SEED, e, craw, coll32, True) for e in (0, 1, 511, 512, D * (N - 1) + D - 1)],
            "queries": [spot(QUERY_SEED, e, qraw, queries, False) for e in (0, 1, D * Q - 1)],
        },
        "checks": checks,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); {doc['remaining']} vectors after deletions; "
          f"smallest gaps: k-th/(k+1)-th {gaps['boundary']:.3g}, within a list {gaps['in_list']:.3g} "
          f"(float32 scores off by at most {checks['float32_max_abs_error']:.2g}); "
          f"{checks['collection_float16_changed']} of {N * D} values changed by float16", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
