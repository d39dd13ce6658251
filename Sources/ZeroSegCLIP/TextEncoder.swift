import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText

// Fast text encoding. The text transformer is causal: a token's hidden states depend only on the
// tokens before it. So prompts that share a token prefix (every class name under one template:
// "<start> a photo of a" ...) compute that prefix once; the rest of each prompt attends to the
// prefix's cached keys and values. In the last layer only the end token (the pooled one) is needed.
// Rows are ragged (no padding): all tokens of all sequences form one [rows, W] matrix for the
// linear layers; attention runs per sequence.

/// One sequence inside a ragged batch.
struct RaggedSequence {
    var row: Int          // first row in the batch
    var count: Int        // tokens in this part
    var position: Int     // position of its first token (= prefix length)
    var prefix: Int?      // index of the prefix sequence (earlier phase) it continues
}

extension CLIPModel {
    /// Embeddings as `encodeTokens` (projected, pooled at the last token), with shared prefixes.
    /// Every sequence must end with its (first) end token.
    func encodeTokensShared(_ ids: [[Int32]], normalize: Bool) -> [[Float]] {
        let c = config.text, w = c.hiddenSize
        // Group by shared prefix: sort, then greedily extend groups whose longest common prefix
        // with the group's first member is at least `minShared` tokens.
        let minShared = 3
        let order = ids.indices.sorted { ids[$0].lexicographicallyPrecedes(ids[$1]) }
        var groups: [(members: [Int], prefix: Int)] = []
        for i in order {
            if var g = groups.last, let first = g.members.first {
                let a = ids[first], b = ids[i]
                var l = 0
                while l < min(a.count, b.count) && a[l] == b[l] { l += 1 }
                let shared = min(l, g.prefix, b.count - 1, g.members.map { ids[$0].count - 1 }.min()!)
                if shared >= minShared {
                    g.members.append(i); g.prefix = shared
                    groups[groups.count - 1] = g
                    continue
                }
            }
            groups.append(([i], ids[i].count - 1))
        }
        // Phase 1: prefixes (groups of one have no shared prefix: they run whole in phase 2).
        var prefixSeqs: [RaggedSequence] = [], prefixTokens: [Int32] = []
        var groupPrefix = [Int?](repeating: nil, count: groups.count)
        for (gi, g) in groups.enumerated() where g.members.count > 1 {
            groupPrefix[gi] = prefixSeqs.count
            prefixSeqs.append(RaggedSequence(row: prefixTokens.count, count: g.prefix, position: 0, prefix: nil))
            prefixTokens += ids[g.members[0]][0..<g.prefix]
        }
        var kv: [Buffer] = []
        if !prefixSeqs.isEmpty {
            _ = raggedForward(tokens: prefixTokens, seqs: prefixSeqs, prefixKV: nil, keepKV: &kv, pooledOnly: false)
        }
        // Phase 2: the rest of every sequence.
        var seqs: [RaggedSequence] = [], tokens: [Int32] = [], owner: [Int] = []
        for (gi, g) in groups.enumerated() {
            let start = groupPrefix[gi] == nil ? 0 : g.prefix
            for m in g.members {
                seqs.append(RaggedSequence(row: tokens.count, count: ids[m].count - start, position: start, prefix: groupPrefix[gi]))
                tokens += ids[m][start...]
                owner.append(m)
            }
        }
        var unused: [Buffer] = []
        let pooled = raggedForward(tokens: tokens, seqs: seqs, prefixKV: kv.isEmpty ? nil : (kv, prefixSeqs),
                                   keepKV: &unused, pooledOnly: true)  // [S, W], final LN applied
        let p = config.projectionDim
        let emb = Buffer(seqs.count * p)
        ZeroSegCore.linear(pooled.ptr, textProjection, nil, emb.ptr, m: seqs.count, n: p, k: w)
        var result = [[Float]](repeating: [], count: ids.count)
        for (si, m) in owner.enumerated() {
            var v = Array(UnsafeBufferPointer(start: emb.ptr + si * p, count: p))
            if normalize { l2Normalize(&v) }
            result[m] = v
        }
        withExtendedLifetime((pooled, emb, kv)) {}
        _ = c
        return result
    }

    /// Runs the text transformer over ragged sequences. With `prefixKV`, sequence s continues
    /// prefix `s.prefix` whose per-layer keys/values ([rows, 2W] per layer) were kept by an earlier
    /// call. With `pooledOnly`, the last layer computes only each sequence's last token and the
    /// result is final-LN(last token) [S, W]; otherwise the hidden states [rows, W] (and, if
    /// `keepKV` is used, per-layer K|V).
    func raggedForward(tokens: [Int32], seqs: [RaggedSequence], prefixKV: ([Buffer], [RaggedSequence])?,
                       keepKV: inout [Buffer], pooledOnly: Bool) -> Buffer {
        let c = config.text, w = c.hiddenSize, rows = tokens.count, heads = c.numAttentionHeads, d = w / heads
        let x = Buffer(rows * w)
        for s in seqs {
            for j in 0..<s.count {
                let dst = x.ptr + (s.row + j) * w
                let e = textModel.tokenEmbedding + Int(tokens[s.row + j]) * w, pe = textModel.positionEmbedding + (s.position + j) * w
                for i in 0..<w { dst[i] = e[i] + pe[i] }
            }
        }
        let maxKeys = seqs.map { s in s.count + (s.prefix.map { prefixKV!.1[$0].count } ?? 0) }.max() ?? 1
        let maxRows = seqs.map(\.count).max() ?? 1
        let h = Buffer(rows * w), qkv = Buffer(rows * 3 * w), a = Buffer(rows * w)
        let keys = Buffer(maxKeys * w), vals = Buffer(maxKeys * w), scores = Buffer(maxRows * maxKeys)
        let m = Buffer(rows * textModel.layers[0].fc1.outFeatures)
        let lastRows = Buffer(seqs.count * w), lastM = Buffer(seqs.count * textModel.layers[0].fc1.outFeatures)
        defer { withExtendedLifetime((x, h, qkv, a, keys, vals, scores, m, lastRows, lastM)) {} }
        let nl = textModel.layers.count
        let scale = 1 / Float(d).squareRoot()
        for (li, l) in textModel.layers.enumerated() {
            let last = pooledOnly && li == nl - 1
            l.layerNorm1(x.ptr, h.ptr, rows: rows)
            l.selfAttn.qkv(h.ptr, qkv.ptr, rows: rows)
            if !pooledOnly {
                let store = Buffer(rows * 2 * w)  // K | V per row
                for r in 0..<rows { (store.ptr + r * 2 * w).update(from: qkv.ptr + r * 3 * w + w, count: 2 * w) }
                keepKV.append(store)
            }
            for (si, s) in seqs.enumerated() {
                // Keys/values: the prefix's (if any), then this sequence's own.
                var np = 0
                var kp: ConstFloatPtr, vp: ConstFloatPtr, ld: Int
                if let pi = s.prefix, let (store, pseqs) = prefixKV {
                    let ps = pseqs[pi], st = store[li]
                    np = ps.count
                    for r in 0..<np {
                        (keys.ptr + r * w).update(from: st.ptr + (ps.row + r) * 2 * w, count: w)
                        (vals.ptr + r * w).update(from: st.ptr + (ps.row + r) * 2 * w + w, count: w)
                    }
                    for r in 0..<s.count {
                        (keys.ptr + (np + r) * w).update(from: qkv.ptr + (s.row + r) * 3 * w + w, count: w)
                        (vals.ptr + (np + r) * w).update(from: qkv.ptr + (s.row + r) * 3 * w + 2 * w, count: w)
                    }
                    kp = ConstFloatPtr(keys.ptr); vp = ConstFloatPtr(vals.ptr); ld = w
                } else {
                    kp = ConstFloatPtr(qkv.ptr + s.row * 3 * w + w); vp = ConstFloatPtr(qkv.ptr + s.row * 3 * w + 2 * w); ld = 3 * w
                }
                let nk = np + s.count
                // Query rows: all, or only the last token in the pooled last layer.
                let q0 = last ? s.count - 1 : 0, nq = s.count - q0
                let out = last ? lastRows.ptr + si * w : a.ptr + s.row * w
                for hd in 0..<heads {
                    gemmNT(qkv.ptr + (s.row + q0) * 3 * w + hd * d, lda: 3 * w, kp + hd * d, ldb: ld, scores.ptr, ldc: nk,
                           m: nq, n: nk, k: d, alpha: scale)
                    softmaxRows(scores.ptr, rows: nq, n: nk, valid: { np + q0 + $0 + 1 })
                    gemmNN(scores.ptr, lda: nk, vp + hd * d, ldb: ld, out + hd * d, ldc: w, m: nq, n: d, k: nk)
                }
            }
            if last {
                // Residual stream of the last tokens only.
                let xl = Buffer(seqs.count * w)
                for (si, s) in seqs.enumerated() { (xl.ptr + si * w).update(from: x.ptr + (s.row + s.count - 1) * w, count: w) }
                l.selfAttn.outProj(lastRows.ptr, xl.ptr, rows: seqs.count, accumulate: true)
                l.layerNorm2(xl.ptr, lastRows.ptr, rows: seqs.count)
                l.fc1(lastRows.ptr, lastM.ptr, rows: seqs.count)
                activate(lastM.ptr, count: seqs.count * l.fc1.outFeatures, l.act)
                l.fc2(lastM.ptr, xl.ptr, rows: seqs.count, accumulate: true)
                textModel.finalLayerNorm(xl.ptr, xl.ptr, rows: seqs.count)
                return xl
            }
            l.selfAttn.outProj(a.ptr, x.ptr, rows: rows, accumulate: true)
            l.layerNorm2(x.ptr, h.ptr, rows: rows)
            l.fc1(h.ptr, m.ptr, rows: rows)
            activate(m.ptr, count: rows * l.fc1.outFeatures, l.act)
            l.fc2(m.ptr, x.ptr, rows: rows, accumulate: true)
        }
        if pooledOnly {  // no layers: pool the embeddings
            let xl = Buffer(seqs.count * w)
            for (si, s) in seqs.enumerated() { (xl.ptr + si * w).update(from: x.ptr + (s.row + s.count - 1) * w, count: w) }
            textModel.finalLayerNorm(xl.ptr, xl.ptr, rows: seqs.count)
            return xl
        }
        return x
    }
}
