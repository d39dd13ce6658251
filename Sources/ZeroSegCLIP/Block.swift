import CKernels
import ZeroSegCore

// The transformer block (CLIPEncoderLayer), written once for both towers and every caller:
//
//   h1 = LN1(x); q | k | v = h1 · Wqkvᵀ + b; a = softmax(q kᵀ / √d) v per head (causal: row t sees
//   keys 0...t); mid = x + a · Woᵀ + bo; out = mid + act(LN2(mid) · W1ᵀ + b1) · W2ᵀ + b2
//
// `EncoderLayer.forward` is parameterised by
// - the sequences: x: [R, W] holds S sequences back to back (a batch [B, T, W] is B sequences of
//   T rows; the fast text path packs prompts of different lengths without padding); attention
//   full (vision) or causal (text); a sequence may continue a prefix whose keys and values an
//   earlier pass kept (`forwardKeepingQKV`), as if the prefix's rows came first;
// - which rows come out: all (x updated in place), or only one per sequence (`pooled`: the
//   class token, first, or the end token, last): keys and values are computed for every row,
//   queries, attention output and MLP for those rows only;
// - what it records: nothing; q | k | v (for a prefix's continuations); or a `LayerTape`, what
//   `textBackward` (ZeroSegTuning) needs (recording, a prefix is a sequence of the same batch:
//   the CoOp prompts' shared [SOT] ctx rows run once). Hidden states for golden dumps are recorded by the
//   callers between layers.
// The one other block is the dense last block (`denseLastLayer`, Dense.swift), which changes the
// attention itself; it shares LN1, `outProj` and `mlp` with this one.

/// One sequence inside a layer's input rows.
package struct RaggedSequence: Sendable {
    package var row: Int          // first row in the batch
    package var count: Int        // tokens in this part
    package var position: Int     // position of its first token (= prefix length)
    package var prefix: Int?      // index of the prefix sequence (earlier pass) it continues

    package init(row: Int, count: Int, position: Int = 0, prefix: Int? = nil) {
        self.row = row; self.count = count; self.position = position; self.prefix = prefix
    }

    /// A batch [B, T, W]: B sequences of T rows, no prefixes.
    package static func batch(_ b: Int, tokens t: Int) -> [RaggedSequence] {
        (0..<b).map { RaggedSequence(row: $0 * t, count: t) }
    }
}

/// The row of each sequence that a pooled forward pass computes.
package enum PooledRow: Sendable {
    case first  // the class token (vision)
    case last   // the end token (text prompts that end with it)
}

/// What the backward pass needs from the forward pass of one layer (`EncoderLayer.forwardRecording`).
/// The layer norms' outputs are not kept (the backward pass needs no weight gradients, and the
/// input gradient of a layer norm needs only its input and per-row statistics).
public struct LayerTape: Sendable {
    /// x: [R, W], the layer's input (residual stream).
    public let input: Buffer
    /// Per-row mean and 1/√(var + eps) of LN1(x): [R].
    public let ln1Mean: Buffer, ln1Rstd: Buffer
    /// q | k | v: [R, 3W] (heads contiguous inside each).
    public let qkv: Buffer
    /// Attention probabilities, per sequence of T rows [H, T, T] (one after the other); causal:
    /// row t is zero past column t.
    public let probs: Buffer
    /// x + attention output (the input of LN2): [R, W].
    public let mid: Buffer
    /// Per-row mean and 1/√(var + eps) of LN2(mid): [R].
    public let ln2Mean: Buffer, ln2Rstd: Buffer
    /// fc1 output before the activation: [R, I].
    public let preActivation: Buffer

    init(rows r: Int, width w: Int, intermediate i: Int, probs: Int) {
        input = Buffer(r * w)
        ln1Mean = Buffer(r); ln1Rstd = Buffer(r)
        qkv = Buffer(r * 3 * w)
        self.probs = Buffer(probs)
        mid = Buffer(r * w)
        ln2Mean = Buffer(r); ln2Rstd = Buffer(r)
        preActivation = Buffer(r * i)
    }

    /// Floats held by the tape.
    public var floats: Int { input.count + 2 * ln1Mean.count + qkv.count + probs.count + mid.count + 2 * ln2Mean.count + preActivation.count }
}

/// Work buffers of `EncoderLayer.forward`, reused across the layers of one pass (a large ragged
/// text batch would otherwise map fresh memory for every layer). Not for concurrent use.
package final class BlockScratch {
    enum Slot: Int, CaseIterable { case h, qkv, scores, keys, values, queries, pooledInput, mlp }
    private var slots = Slot.allCases.map { _ in Buffer(0) }

    package init() {}

    /// The buffer of `slot`, at least `count` floats (contents undefined).
    func callAsFunction(_ slot: Slot, _ count: Int) -> Buffer {
        if slots[slot.rawValue].count < count { slots[slot.rawValue] = Buffer(count) }
        return slots[slot.rawValue]
    }
}

/// Contiguous ranges of items, at most `parts` of them and none empty, with about equal total cost:
/// part i ends at the first item where the running cost reaches (i + 1)/parts of the total. A
/// function of the costs and `parts` alone (so a split never depends on timing).
package func costSplit(_ costs: [Int], parts: Int) -> [Range<Int>] {
    let total = costs.reduce(0, +), n = costs.count
    guard parts > 1, n > 1, total > 0 else { return n == 0 ? [] : [0..<n] }
    var ranges: [Range<Int>] = [], start = 0, running = 0
    for (i, c) in costs.enumerated() {
        running += c
        let part = ranges.count
        if part < parts - 1, running * parts >= total * (part + 1), i + 1 < n {
            ranges.append(start..<(i + 1)); start = i + 1
        }
    }
    ranges.append(start..<n)
    return ranges
}

/// The (sequence, head) pairs of attention over sequences that may continue a prefix of the same
/// batch (item i: sequence i / heads, head i % heads), split over up to `parts` threads by their
/// cost T · (T_prefix + T) (`costSplit`); a keys-only first sequence has no pairs, so its items are
/// in no part. Also the largest pair's cost (its [T, T_prefix + T] scores).
package func attentionPairParts(_ seqs: [RaggedSequence], heads: Int, keysOnly: Bool, parts: Int) -> (parts: [Range<Int>], maxCost: Int) {
    let first = keysOnly ? 1 : 0
    let costs = seqs.dropFirst(first).flatMap { s in
        [Int](repeating: s.count * ((s.prefix.map { seqs[$0].count } ?? 0) + s.count), count: heads)
    }
    let shift = first * heads
    return (costSplit(costs, parts: parts).map { ($0.lowerBound + shift)..<($0.upperBound + shift) }, costs.max() ?? 0)
}

extension LayerNorm {
    /// With `mean` and `rstd` ([rows]), also records each row's mean and 1/√(var + eps) (for
    /// backward; the same arithmetic as without, rows split over the thread budget when many).
    package func callAsFunction(_ x: ConstFloatPtr, _ out: FloatPtr, rows: Int, mean: FloatPtr?, rstd: FloatPtr?) {
        guard let mean, let rstd else { return self(x, out, rows: rows) }
        let nt = rows * dim >= 1 << 15 ? min(threadBudget, rows) : 1
        nonisolated(unsafe) let (xp, op, mp, rp) = (x, out, mean, rstd)
        let (w, b, c, e) = (weight, bias, dim, eps)
        parallelFor(nt) { i in
            layerNormRows(xp, w, b, op, rows: (rows * i / nt)..<(rows * (i + 1) / nt), cols: c, eps: e, mean: mp, rstd: rp)
        }
    }
}

extension EncoderLayer {
    /// The block on x: [R, W] (R = rows of `seqs`), in place; with `pooled`, x is scratch afterwards
    /// and `pooled.out`: [S, W] gets the block's output at one row per sequence. `prefix`: the
    /// q | k | v rows [R', 3W] of this layer kept by an earlier pass, and that pass's sequences
    /// (`RaggedSequence.prefix` indexes them). `scratch`: work buffers to reuse (default: fresh ones).
    package func forward(_ x: FloatPtr, _ seqs: [RaggedSequence], causal: Bool,
                         prefix: (qkv: ConstFloatPtr, seqs: [RaggedSequence])? = nil,
                         pooled: (row: PooledRow, out: FloatPtr)? = nil, scratch: BlockScratch? = nil) {
        _ = run(x, seqs, causal: causal, prefix: prefix, pooled: pooled, keep: .nothing, batchPrefix: false, keysOnly: 0,
                scratch: scratch ?? BlockScratch())
    }

    /// `forward` over all rows, keeping q | k | v: [R, 3W] for sequences that continue these.
    package func forwardKeepingQKV(_ x: FloatPtr, _ seqs: [RaggedSequence], causal: Bool,
                                   prefix: (qkv: ConstFloatPtr, seqs: [RaggedSequence])? = nil,
                                   scratch: BlockScratch? = nil) -> Buffer {
        run(x, seqs, causal: causal, prefix: prefix, pooled: nil, keep: .qkv, batchPrefix: false, keysOnly: 0, scratch: scratch ?? BlockScratch()).qkv
    }

    /// `forward` over all rows, recording what the backward pass needs. A sequence may continue a
    /// prefix of the same batch: `s.prefix` = the index of an earlier sequence of `seqs` (itself
    /// without prefix, `s.position` = its row count), whose keys and values it attends to as if the
    /// prefix's rows came first (the prefix runs once for all its continuations). Attention runs per
    /// (sequence, head), split over the thread budget (each pair computed the same way whatever
    /// the split).
    ///
    /// `keysOnly`: the first sequence (rows 0..<keysOnly, a prefix) gives keys and values only: its
    /// rows get no attention or MLP (their output is their input), as for prompt rows whose outputs
    /// nothing uses.
    package func forwardRecording(_ x: FloatPtr, _ seqs: [RaggedSequence], causal: Bool, keysOnly: Int = 0,
                                  scratch: BlockScratch? = nil) -> LayerTape {
        checkBatchPrefixes(seqs, keysOnly: keysOnly, "forwardRecording")
        return run(x, seqs, causal: causal, prefix: nil, pooled: nil, keep: .tape, batchPrefix: true, keysOnly: keysOnly,
                   scratch: scratch ?? BlockScratch()).tape!
    }

    /// `forward` over all rows, nothing recorded, where a sequence may continue a prefix of the
    /// same batch as in `forwardRecording` (the same arithmetic, so the same bits as its output).
    package func forwardBatchPrefix(_ x: FloatPtr, _ seqs: [RaggedSequence], causal: Bool, keysOnly: Int = 0,
                                    scratch: BlockScratch? = nil) {
        checkBatchPrefixes(seqs, keysOnly: keysOnly, "forwardBatchPrefix")
        _ = run(x, seqs, causal: causal, prefix: nil, pooled: nil, keep: .nothing, batchPrefix: true, keysOnly: keysOnly,
                scratch: scratch ?? BlockScratch())
    }

    private func checkBatchPrefixes(_ seqs: [RaggedSequence], keysOnly: Int, _ caller: String) {
        for (i, s) in seqs.enumerated() {
            if let pi = s.prefix {
                precondition(pi < i && seqs[pi].prefix == nil && s.position == seqs[pi].count,
                             "\(caller): sequence \(i) does not continue an earlier sequence of the batch")
            }
        }
        precondition(keysOnly == 0 || (seqs.first.map { $0.row == 0 && $0.count == keysOnly && $0.prefix == nil } ?? false),
                     "\(caller): the keys-only rows are not the batch's first sequence")
    }

    private enum Keep { case nothing, qkv, tape }

    private func run(_ x: FloatPtr, _ seqs: [RaggedSequence], causal: Bool,
                     prefix: (qkv: ConstFloatPtr, seqs: [RaggedSequence])?, pooled: (row: PooledRow, out: FloatPtr)?,
                     keep: Keep, batchPrefix: Bool, keysOnly k0: Int, scratch: BlockScratch) -> (qkv: Buffer, tape: LayerTape?) {
        let record = keep == .tape
        let w = layerNorm1.dim, heads = selfAttn.heads, d = w / heads
        let rows = seqs.reduce(0) { $0 + $1.count }, ns = seqs.count
        // Prefixes of the same batch: sequence s continuing seqs[p] has [H, T_s, T_p + T_s] probabilities.
        func ownPrefixRows(_ s: RaggedSequence) -> Int { batchPrefix ? s.prefix.map { seqs[$0].count } ?? 0 : 0 }
        let tape = record ? LayerTape(rows: rows, width: w, intermediate: fc1.outFeatures,
                                      probs: seqs.reduce(0) { $0 + heads * $1.count * (ownPrefixRows($1) + $1.count) }) : nil
        tape?.input.ptr.update(from: x, count: rows * w)
        // h = LN1(x): [R, W]
        let h = scratch(.h, rows * w)
        layerNorm1(x, h.ptr, rows: rows, mean: tape?.ln1Mean.ptr, rstd: tape?.ln1Rstd.ptr)
        // qkv = h · Wqkvᵀ + b: [R, 3W]; pooled: k | v of every row, q[S, W] of the pooled rows only
        let qkv = tape?.qkv ?? (keep == .qkv ? Buffer(rows * 3 * w) : scratch(.qkv, rows * 3 * w))
        let pooledRows = pooled.map { p in seqs.map { p.row == .first ? $0.row : $0.row + $0.count - 1 } } ?? []
        let q = scratch(.queries, pooled == nil ? 0 : ns * w)
        if pooled == nil {
            selfAttn.qkv(h.ptr, qkv.ptr, rows: rows)
        } else if selfAttn.qkv.packing != nil {
            // Packed weights are one [3W, W] product: q for every row too, the pooled rows' kept.
            selfAttn.qkv(h.ptr, qkv.ptr, rows: rows)
            for (si, r) in pooledRows.enumerated() { (q.ptr + si * w).update(from: qkv.ptr + r * 3 * w, count: w) }
        } else {
            let wqkv = selfAttn.qkv.weight, bqkv = selfAttn.qkv.bias
            linear(h.ptr, wqkv + w * w, bqkv.map { $0 + w }, qkv.ptr + w, m: rows, n: 2 * w, k: w, ldo: 3 * w)
            let hp = scratch(.pooledInput, ns * w)
            for (si, r) in pooledRows.enumerated() { (hp.ptr + si * w).update(from: h.ptr + r * w, count: w) }
            linear(hp.ptr, wqkv, bqkv, q.ptr, m: ns, n: w, k: w)
        }
        // a = attention output: [R, W], or [S, W] for the pooled rows (into h: LN1's output is not
        // needed any more)
        let aBuf = h, a = aBuf.ptr
        func prefixOf(_ s: RaggedSequence) -> RaggedSequence? { batchPrefix ? nil : s.prefix.flatMap { i in prefix.map { $0.seqs[i] } } }
        let maxKeys = seqs.map { $0.count + (prefixOf($0)?.count ?? 0) }.max() ?? 1
        let maxQueries = pooled == nil ? (seqs.map(\.count).max() ?? 1) : 1
        let scores = scratch(.scores, batchPrefix ? 0 : maxQueries * maxKeys)
        let hasPrefix = seqs.contains { prefixOf($0) != nil }
        let keys = scratch(.keys, hasPrefix ? maxKeys * w : 0), vals = scratch(.values, hasPrefix ? maxKeys * w : 0)
        let scale = 1 / Float(d).squareRoot()
        if batchPrefix {
            // Prefixes of the same batch (all rows): every (sequence, head) pair on its own, the
            // pairs split over the thread budget by their cost (`costSplit`); recording, the
            // probabilities go straight into the tape. A continuation's keys are its prefix's rows
            // (np) then its own: scores [T, np + T] in two column blocks, p · v in two parts.
            var offsets: [Int] = [], probsOffset = 0
            for s in seqs { offsets.append(probsOffset); probsOffset += heads * s.count * (ownPrefixRows(s) + s.count) }
            let (parts, maxTK) = attentionPairParts(seqs, heads: heads, keysOnly: k0 > 0, parts: threadBudget)
            let work = tape == nil ? scratch(.scores, parts.count * maxTK) : Buffer(0)
            nonisolated(unsafe) let (qkvP, aP, probsP, workP) = (ConstFloatPtr(qkv.ptr), a, tape?.probs.ptr, work.ptr)
            parallelFor(parts.count) { part in
                for item in parts[part] {
                    let s = seqs[item / heads], hd = item % heads, t = s.count
                    let np = s.prefix.map { seqs[$0].count } ?? 0, nk = np + t
                    let own = qkvP + s.row * 3 * w, pre = qkvP + (s.prefix.map { seqs[$0].row } ?? 0) * 3 * w
                    let p = probsP.map { $0 + offsets[item / heads] + hd * t * nk } ?? workP + part * maxTK
                    // p[T, nk] = q_h [k_pre; k_own]_hᵀ · scale, softmax per row (causal: up to
                    // column np + r); out[:, h] = p[:, :np] · v_pre_h + p[:, np:] · v_own_h
                    if np > 0 {
                        gemmNT(own + hd * d, lda: 3 * w, pre + w + hd * d, ldb: 3 * w, p, ldc: nk, m: t, n: np, k: d, alpha: scale)
                    }
                    gemmNT(own + hd * d, lda: 3 * w, own + w + hd * d, ldb: 3 * w, p + np, ldc: nk, m: t, n: t, k: d, alpha: scale)
                    for r in 0..<t { zs_softmax_row(p + r * nk, Int32(causal ? np + r + 1 : nk), Int32(nk)) }
                    if np > 0 {
                        gemmNN(p, lda: nk, pre + 2 * w + hd * d, ldb: 3 * w, aP + s.row * w + hd * d, ldc: w, m: t, n: d, k: np)
                    }
                    gemmNN(p + np, lda: nk, own + 2 * w + hd * d, ldb: 3 * w, aP + s.row * w + hd * d, ldc: w, m: t, n: d, k: t,
                           beta: np > 0 ? 1 : 0)
                }
            }
            withExtendedLifetime(work) {}
        }
        for (si, s) in seqs.enumerated() where !batchPrefix {
            let own = qkv.ptr + s.row * 3 * w
            let ps = prefixOf(s)
            if pooled == nil && ps == nil {
                attention(qkv: own, out: a + s.row * w, scores: scores.ptr, tokens: s.count, width: w, heads: heads, causal: causal)
                continue
            }
            // Keys and values: the prefix's rows (if any), then the sequence's own.
            var kp = ConstFloatPtr(own + w), vp = ConstFloatPtr(own + 2 * w), ld = 3 * w, np = 0
            if let ps, let prefix {
                np = ps.count
                for r in 0..<np {
                    (keys.ptr + r * w).update(from: prefix.qkv + (ps.row + r) * 3 * w + w, count: w)
                    (vals.ptr + r * w).update(from: prefix.qkv + (ps.row + r) * 3 * w + 2 * w, count: w)
                }
                for r in 0..<s.count {
                    (keys.ptr + (np + r) * w).update(from: own + r * 3 * w + w, count: w)
                    (vals.ptr + (np + r) * w).update(from: own + r * 3 * w + 2 * w, count: w)
                }
                kp = ConstFloatPtr(keys.ptr); vp = ConstFloatPtr(vals.ptr); ld = w
            }
            let nk = np + s.count
            // Query rows: all (from qkv), or the pooled one (from q).
            let q0 = pooled == nil ? 0 : pooledRows[si] - s.row, nq = pooled == nil ? s.count : 1
            let (qp, ldq) = pooled == nil ? (ConstFloatPtr(own), 3 * w) : (ConstFloatPtr(q.ptr + si * w), w)
            let out = a + (pooled == nil ? s.row : si) * w
            for hd in 0..<heads {
                // p[nq, nk] = q_h k_hᵀ · scale, softmax per row (causal: up to the row's own position);
                // out[:, h] = p · v_h
                let p = scores.ptr
                gemmNT(qp + hd * d, lda: ldq, kp + hd * d, ldb: ld, p, ldc: nk, m: nq, n: nk, k: d, alpha: scale)
                for r in 0..<nq { zs_softmax_row(p + r * nk, Int32(causal ? np + q0 + r + 1 : nk), Int32(nk)) }
                gemmNN(p, lda: nk, vp + hd * d, ldb: ld, out + hd * d, ldc: w, m: nq, n: d, k: nk)
            }
        }
        if let pooled {
            // The residual stream of the pooled rows only.
            for (si, r) in pooledRows.enumerated() { (pooled.out + si * w).update(from: x + r * w, count: w) }
            selfAttn.outProj(a, pooled.out, rows: ns, accumulate: true)  // mid = x + a · Woᵀ + bo
            mlp(pooled.out, rows: ns, h: h.ptr, scratch: scratch)
        } else {
            // mid = x + a · Woᵀ + bo; then the MLP (keys-only rows: neither, their output is their input)
            selfAttn.outProj(a + k0 * w, x + k0 * w, rows: rows - k0, accumulate: true)
            mlp(x + k0 * w, rows: rows - k0, h: h.ptr + k0 * w, scratch: scratch, tape: tape, tapeRow: k0)
            if let tape, k0 > 0 {
                tape.mid.ptr.update(from: x, count: k0 * w)
                tape.ln2Mean.ptr.update(repeating: 0, count: k0); tape.ln2Rstd.ptr.update(repeating: 0, count: k0)
                tape.preActivation.ptr.update(repeating: 0, count: k0 * fc1.outFeatures)
                tape.probs.ptr.update(repeating: 0, count: heads * k0 * k0)
            }
        }
        withExtendedLifetime((h, aBuf, scratch)) {}
        return (qkv, tape)
    }

    /// The MLP half in place on x: [R, W]: x += act(LN2(x) · W1ᵀ + b1) · W2ᵀ + b2. `h`: [R, W] work
    /// space; a tape records x (mid), LN2's statistics and fc1's output (at its rows from
    /// `tapeRow` on); fc1's output goes to `scratch` (default: a fresh buffer).
    package func mlp(_ x: FloatPtr, rows: Int, h scratchH: FloatPtr, scratch: BlockScratch? = nil, tape: LayerTape? = nil,
                     tapeRow: Int = 0) {
        let inter = fc1.outFeatures
        tape?.mid.ptr.advanced(by: tapeRow * layerNorm2.dim).update(from: x, count: rows * layerNorm2.dim)
        let h = scratchH
        layerNorm2(x, h, rows: rows, mean: tape.map { $0.ln2Mean.ptr + tapeRow }, rstd: tape.map { $0.ln2Rstd.ptr + tapeRow })
        let m = scratch?(.mlp, rows * inter) ?? Buffer(rows * inter)
        defer { withExtendedLifetime(m) {} }
        fc1(h, m.ptr, rows: rows)
        tape?.preActivation.ptr.advanced(by: tapeRow * inter).update(from: m.ptr, count: rows * inter)
        activate(m.ptr, count: rows * inter, act)
        fc2(m.ptr, x, rows: rows, accumulate: true)  // x += act(m) · W2ᵀ + b2
    }
}
