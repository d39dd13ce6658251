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
    /// prefix `s.prefix` whose per-layer q | k | v ([rows, 3W] per layer) were kept by an earlier
    /// call. With `pooledOnly`, the last layer computes only each sequence's last token and the
    /// result is final-LN(last token) [S, W]; otherwise the hidden states [rows, W] and, in
    /// `keepKV`, per-layer q | k | v.
    func raggedForward(tokens: [Int32], seqs: [RaggedSequence], prefixKV: ([Buffer], [RaggedSequence])?,
                       keepKV: inout [Buffer], pooledOnly: Bool) -> Buffer {
        let c = config.text, w = c.hiddenSize, rows = tokens.count
        let x = Buffer(rows * w)
        for s in seqs {
            for j in 0..<s.count {
                let dst = x.ptr + (s.row + j) * w
                let e = textModel.tokenEmbedding + Int(tokens[s.row + j]) * w, pe = textModel.positionEmbedding + (s.position + j) * w
                for i in 0..<w { dst[i] = e[i] + pe[i] }
            }
        }
        let scratch = BlockScratch()  // work buffers shared by the layers
        defer { withExtendedLifetime((x, scratch)) {} }
        let nl = textModel.layers.count
        for (li, l) in textModel.layers.enumerated() {
            let prefix = prefixKV.map { (qkv: ConstFloatPtr($0.0[li].ptr), seqs: $0.1) }
            if pooledOnly && li == nl - 1 {
                // Last layer: the last tokens only.
                let xl = Buffer(seqs.count * w)
                l.forward(x.ptr, seqs, causal: true, prefix: prefix, pooled: (.last, xl.ptr), scratch: scratch)
                textModel.finalLayerNorm(xl.ptr, xl.ptr, rows: seqs.count)
                return xl
            }
            if pooledOnly {
                l.forward(x.ptr, seqs, causal: true, prefix: prefix, scratch: scratch)
            } else {
                keepKV.append(l.forwardKeepingQKV(x.ptr, seqs, causal: true, prefix: prefix, scratch: scratch))
            }
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
