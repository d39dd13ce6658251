import ZeroSeg

nonisolated(unsafe) private var tokenizer: Tokenizer!

/// The bundled CLIP tokenizer on arbitrary bytes read as UTF-8 (invalid sequences replaced, as
/// String(decoding:) does): cleaning (ftfy-like fixes, HTML entities, whitespace, lowercasing),
/// the pre-tokeniser and BPE, and the truncation to a context length.
let tokenizerTarget = FuzzTarget(name: "tokenizer", covers: "Tokenizer: TextClean, pre-tokeniser, BPE, truncation",
                                 setUp: { tokenizer = try Tokenizer.bundled() }) { bytes in
    let s = String(decoding: bytes, as: UTF8.self)
    let ids = tokenizer.encode(s)
    precondition(ids.allSatisfy { $0 >= 0 && Int($0) < tokenizer.vocabularySize })
    do {
        let (t, _) = try tokenizer.tokenizeReportingTruncation(s, contextLength: 77)
        precondition(t.count <= 77 && t.first == Tokenizer.startToken && t.last == Tokenizer.endToken)
    } catch { expectTyped(error) }
}
