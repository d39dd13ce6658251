import CUTF8Proc
import ZeroSegCore
import CZlib
import Foundation

/// OpenAI CLIP's byte-level BPE tokenizer, exactly as open_clip 3.3.0 runs it
/// (`open_clip.tokenizer.SimpleTokenizer` with the default "lower" clean, and
/// `open_clip.tokenize` without the zero padding).
///
/// Pipeline: `TextClean.cleanLower` (ftfy.fix_text without mojibake repair, html.unescape
/// twice, whitespace collapse, str.lower) -> the pre-tokeniser pattern
/// `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
/// (regex module, IGNORECASE) -> UTF-8 bytes -> byte-to-unicode symbols -> BPE by merge
/// rank with `</w>` on the last symbol of a word.
///
/// Thread-safe: the only mutable state, the word cache, is behind a lock (`Locked`).
public final class Tokenizer: Sendable {
    public static let startToken: Int32 = 49406
    public static let endToken: Int32 = 49407
    /// open_clip's DEFAULT_CONTEXT_LENGTH.
    public static let defaultContextLength = 77
    /// File name of the bundled vocabulary.
    public static let vocabFileName = "bpe_simple_vocab_16e6.txt.gz"

    /// Number of merges open_clip reads from the gzipped file: lines 1 ..< 49152-256-2+1.
    static let openCLIPMergeCount = 49152 - 256 - 2

    /// Number of entries of the vocabulary (49408 for CLIP).
    public var vocabularySize: Int { vocab.count }

    /// Vocabulary in id order, HF spelling of the special tokens (for `writeHF`).
    private let vocab: [(token: String, id: Int32)]
    /// Merges in rank order (for `writeHF`).
    private let merges: [(String, String)]
    /// byte -> id of its symbol, inside a word / as the last symbol (with "</w>").
    private let byteID: [Int32]
    private let byteIDEnd: [Int32]
    /// (left id << 32 | right id) -> (rank << 32 | merged id)
    private let mergeTable: [UInt64: UInt64]
    private let cache = Locked<[[UInt8]: [Int32]]>([:])
    private static let cacheLimit = 100_000

    // MARK: - Loading

    /// Reads open_clip's `bpe_simple_vocab_16e6.txt.gz` (gzip, zlib).
    public convenience init(bpeGzip url: URL) throws {
        let raw = try Tokenizer.readFile(url, what: "BPE vocabulary")
        let text = try Tokenizer.gunzip(raw, path: url.path)
        guard String(validating: text, as: UTF8.self) != nil else {
            throw ZeroSegError("BPE vocabulary \(url.path) is corrupt: not UTF-8 text")
        }
        // Python: text.split('\n')[1 : 49152-256-2+1], each line .split() into a pair
        let lines = text.split(separator: 0x0A, maxSplits: Tokenizer.openCLIPMergeCount + 1,
                               omittingEmptySubsequences: false)
        guard lines.count > Tokenizer.openCLIPMergeCount else {
            throw ZeroSegError("BPE vocabulary \(url.path) is truncated: \(lines.count) lines, need at least \(Tokenizer.openCLIPMergeCount + 1)")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(Tokenizer.openCLIPMergeCount)
        for lineNo in 1...Tokenizer.openCLIPMergeCount {
            merges.append(try Tokenizer.parseMerge(lines[lineNo], lineNo: lineNo + 1, path: url.path))
        }
        // vocab = byte symbols, byte symbols + "</w>", merged merges, specials (open_clip order)
        let symbols = Tokenizer.byteSymbolsInVocabOrder.map { $0.symbol }
        var tokens = symbols + symbols.map { $0 + "</w>" }
        tokens += merges.map { $0.0 + $0.1 }
        tokens += ["<|startoftext|>", "<|endoftext|>"]
        var encoder: [String: Int32] = [:]
        encoder.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() { encoder[t] = Int32(i) }  // later duplicates win, as dict(zip(...))
        try self.init(encoder: encoder, merges: merges, source: url.path)
    }

    /// Reads a Hugging Face CLIPTokenizer's `vocab.json` (token -> id) and `merges.txt`
    /// ("#version" header line, then "left right" per line).
    public convenience init(vocabJSON: URL, merges mergesURL: URL) throws {
        let json = try Tokenizer.readFile(vocabJSON, what: "vocab.json")
        let decoded: [String: Int]
        do {
            decoded = try VocabJSON.parseFlatObject([UInt8](json)) ?? JSONDecoder().decode([String: Int].self, from: json)
        } catch {
            throw ZeroSegError("vocab.json \(vocabJSON.path) is corrupt: not a JSON object of token -> id")
        }
        var encoder: [String: Int32] = [:]
        encoder.reserveCapacity(decoded.count)
        for (token, id) in decoded {
            guard id >= 0 && id < Int(Int32.max) else {
                throw ZeroSegError("vocab.json \(vocabJSON.path) is corrupt: id \(id) of \(token.debugDescription) out of range")
            }
            encoder[token] = Int32(id)
        }
        let mergeData = try Tokenizer.readFile(mergesURL, what: "merges.txt")
        guard String(validating: mergeData, as: UTF8.self) != nil else {
            throw ZeroSegError("merges.txt \(mergesURL.path) is corrupt: not UTF-8 text")
        }
        var merges: [(String, String)] = []
        let lines = [UInt8](mergeData).split(separator: 0x0A, omittingEmptySubsequences: false)
        for (i, line) in lines.enumerated() {
            if i == 0 && line.starts(with: Array("#version".utf8)) { continue }
            if line.allSatisfy({ TextClean.isPythonSpace(UInt32($0)) }) { continue }
            merges.append(try Tokenizer.parseMerge(line, lineNo: i + 1, path: mergesURL.path))
        }
        try self.init(encoder: encoder, merges: merges, source: vocabJSON.path)
    }

    private init(encoder: [String: Int32], merges: [(String, String)], source: String) throws {
        var encoder = encoder
        // Special tokens: open_clip spells them <start_of_text>/<end_of_text>, HF <|startoftext|>/<|endoftext|>.
        for (hf, oc, id) in [("<|startoftext|>", "<start_of_text>", Tokenizer.startToken),
                             ("<|endoftext|>", "<end_of_text>", Tokenizer.endToken)] {
            if let other = encoder.removeValue(forKey: oc) { encoder[hf] = other }
            guard encoder[hf] == id else {
                throw ZeroSegError("vocabulary \(source) is not CLIP's: \(hf) must have id \(id)")
            }
        }
        var byteID = [Int32](repeating: 0, count: 256)
        var byteIDEnd = [Int32](repeating: 0, count: 256)
        for (byte, symbol) in Tokenizer.byteSymbolsInVocabOrder {
            guard let a = encoder[symbol], let b = encoder[symbol + "</w>"] else {
                throw ZeroSegError("vocabulary \(source) is corrupt: byte symbol \(symbol.debugDescription) missing")
            }
            byteID[Int(byte)] = a
            byteIDEnd[Int(byte)] = b
        }
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (left, right)) in merges.enumerated() {
            guard let l = encoder[left], let r = encoder[right], let m = encoder[left + right] else {
                throw ZeroSegError("vocabulary \(source) is corrupt: merge \"\(left) \(right)\" (rank \(rank)) uses tokens missing from the vocabulary")
            }
            // later duplicates win, as dict(zip(merges, range(...))) does
            table[Tokenizer.pairKey(l, r)] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: m))
        }
        self.byteID = byteID
        self.byteIDEnd = byteIDEnd
        self.mergeTable = table
        self.merges = merges
        self.vocab = encoder.map { (token: $0.key, id: $0.value) }.sorted { $0.id < $1.id }
    }

    private static func readFile(_ url: URL, what: String) throws -> Data {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ZeroSegError("\(what) not found: \(url.path)")
        }
        do {
            return try Data(contentsOf: url)
        } catch {
            throw ZeroSegError("cannot read \(what) \(url.path): \(error.localizedDescription)")
        }
    }

    /// One merge line: Python's `tuple(line.split())` must give exactly two symbols.
    private static func parseMerge(_ line: ArraySlice<UInt8>, lineNo: Int, path: String) throws -> (String, String) {
        if let pair = splitSimpleMerge(line) { return pair }
        guard let pair = splitMerge(line) else {
            let string = String(decoding: line, as: UTF8.self)
            throw ZeroSegError("BPE merges \(path) is corrupt: line \(lineNo) is not two symbols: \(string.debugDescription)")
        }
        return pair
    }

    /// Python's `tuple(line.split())` when it gives two symbols, else nil.
    static func splitMerge(_ line: ArraySlice<UInt8>) -> (String, String)? {
        let string = String(decoding: line, as: UTF8.self)
        let parts = TextClean.splitJoin(string.unicodeScalars.map(\.value)).split(separator: 0x20)
        guard parts.count == 2 else { return nil }
        func text(_ p: ArraySlice<UInt32>) -> String {
            var s = String.UnicodeScalarView()
            for c in p { s.append(Unicode.Scalar(c)!) }
            return String(s)
        }
        return (text(parts[0]), text(parts[1]))
    }

    /// `parseMerge`'s fast path (5x faster; merges.txt's lines nearly all take it): two symbols
    /// around one ASCII space, no other byte that is or begins Python whitespace. nil: the line
    /// takes the general path. Bytes are valid UTF-8 (the callers check the whole file).
    static func splitSimpleMerge(_ line: ArraySlice<UInt8>) -> (String, String)? {
        var space = -1
        var i = line.startIndex
        while i < line.endIndex {
            let b = line[i]
            if b == 0x20 {
                guard space < 0 else { return nil }
                space = i
            } else if b < 0x21 {
                return nil
            } else if b >= 0x80, pythonSpaceLeadBytes.contains(b),
                      pythonSpaceUTF8.contains(where: { line[i...].starts(with: $0) }) {
                return nil
            }
            i += 1
        }
        guard space > line.startIndex, space < line.endIndex - 1 else { return nil }
        return (String(decoding: line[..<space], as: UTF8.self), String(decoding: line[(space + 1)...], as: UTF8.self))
    }

    /// The non-ASCII Python whitespace characters in UTF-8, and their first bytes.
    private static let pythonSpaceUTF8: [[UInt8]] = UnicodeTables.pythonWhitespace.filter { $0 >= 0x80 }
        .compactMap { Unicode.Scalar($0).map { Array(String(Character($0)).utf8) } }
    private static let pythonSpaceLeadBytes = Set(pythonSpaceUTF8.map { $0[0] })

    /// Decompresses gzip data (all members) with zlib.
    static func gunzip(_ data: Data, path: String) throws -> [UInt8] {
        if data.isEmpty { throw ZeroSegError("BPE vocabulary \(path) is corrupt: empty file") }
        var out: [UInt8] = []
        out.reserveCapacity(data.count * 2)
        var stream = z_stream()
        guard inflateInit2_(&stream, 16 + MAX_WBITS, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw ZeroSegError("zlib: inflateInit2 failed for \(path)")
        }
        defer { inflateEnd(&stream) }
        let chunk = 1 << 18
        var buffer = [UInt8](repeating: 0, count: chunk)
        var input = [UInt8](data)
        try input.withUnsafeMutableBufferPointer { inBuf in
            stream.next_in = inBuf.baseAddress
            stream.avail_in = uInt(inBuf.count)
            while true {
                let (rc, produced) = buffer.withUnsafeMutableBufferPointer { outBuf -> (Int32, Int) in
                    stream.next_out = outBuf.baseAddress
                    stream.avail_out = uInt(chunk)
                    let rc = inflate(&stream, Z_NO_FLUSH)
                    return (rc, chunk - Int(stream.avail_out))
                }
                out.append(contentsOf: buffer[0..<produced])
                switch rc {
                case Z_OK:
                    continue
                case Z_STREAM_END:
                    if stream.avail_in == 0 { return }
                    guard inflateReset(&stream) == Z_OK else {
                        throw ZeroSegError("BPE vocabulary \(path) is corrupt: bad gzip member")
                    }
                case Z_BUF_ERROR where stream.avail_in == 0:
                    throw ZeroSegError("BPE vocabulary \(path) is corrupt: gzip data truncated")
                default:
                    let msg = stream.msg.map { String(cString: $0) } ?? "error \(rc)"
                    throw ZeroSegError("BPE vocabulary \(path) is corrupt: not gzip data (zlib: \(msg))")
                }
            }
        }
        return out
    }

    // MARK: - Byte to unicode

    /// open_clip's `bytes_to_unicode()` in dict order: (byte, symbol).
    static let byteSymbolsInVocabOrder: [(byte: UInt8, symbol: String)] = {
        var bs: [Int] = Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) {
            bs.append(b)
            cs.append(256 + n)
            n += 1
        }
        return zip(bs, cs).map { (UInt8($0), String(Unicode.Scalar(UInt32($1))!)) }
    }()

    @inline(__always) private static func pairKey(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    // MARK: - Encoding

    /// Token ids of `text`, without start/end tokens (`SimpleTokenizer.encode`).
    public func encode(_ text: String) -> [Int32] {
        let cps = TextClean.cleanLower(text)
        var ids: [Int32] = []
        ids.reserveCapacity(cps.count / 3 + 4)
        PreTokenizer.forEachToken(cps) { token, special in
            if let special {
                ids.append(special)
                return
            }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(token.count)
            TextClean.appendUTF8(token, to: &bytes)
            ids += bpe(bytes)
        }
        return ids
    }

    /// `open_clip.tokenize(text, context_length)` for one text without the zero padding:
    /// [start] + encode(text) + [end], cut to `contextLength` with the end token kept last.
    /// `contextLength` must be positive (open_clip asserts the same); otherwise it throws.
    public func tokenize(_ text: String, contextLength: Int = Tokenizer.defaultContextLength) throws -> [Int32] {
        try tokenizeReportingTruncation(text, contextLength: contextLength).ids
    }

    /// Like `tokenize`, and says whether tokens were cut off so callers can warn about it.
    public func tokenizeReportingTruncation(_ text: String, contextLength: Int = Tokenizer.defaultContextLength)
        throws -> (ids: [Int32], truncated: Bool) {
        guard contextLength > 0 else { throw ZeroSegError("tokenize: context length \(contextLength) (must be positive)") }
        return tokenize(text, positiveContextLength: contextLength)
    }

    /// `tokenizeReportingTruncation` for a context length known to be positive (a model's
    /// validated `max_position_embeddings`).
    package func tokenize(_ text: String, positiveContextLength contextLength: Int) -> (ids: [Int32], truncated: Bool) {
        var ids = [Tokenizer.startToken] + encode(text) + [Tokenizer.endToken]
        guard ids.count > contextLength else { return (ids, false) }
        ids.removeLast(ids.count - contextLength)
        ids[contextLength - 1] = Tokenizer.endToken
        return (ids, true)
    }

    /// BPE ids of one pre-token (UTF-8 bytes), cached.
    private func bpe(_ bytes: [UInt8]) -> [Int32] {
        if let hit = cache.withLock({ $0[bytes] }) { return hit }
        let ids = bpeUncached(bytes)
        cache.withLock { c in
            if c.count >= Tokenizer.cacheLimit { c.removeAll(keepingCapacity: true) }
            c[bytes] = ids
        }
        return ids
    }

    private func bpeUncached(_ bytes: [UInt8]) -> [Int32] {
        guard let last = bytes.last else { return [] }
        var word: [Int32] = bytes.dropLast().map { byteID[Int($0)] }
        word.append(byteIDEnd[Int(last)])
        var next: [Int32] = []
        next.reserveCapacity(word.count)
        while word.count > 1 {
            // the adjacent pair with the lowest merge rank
            var best = UInt64.max
            for i in 0..<(word.count - 1) {
                if let v = mergeTable[Tokenizer.pairKey(word[i], word[i + 1])], v < best { best = v }
            }
            if best == UInt64.max { break }
            let merged = Int32(bitPattern: UInt32(truncatingIfNeeded: best))
            // find the pair back (ranks are unique per pair)
            var first: Int32 = 0, second: Int32 = 0
            for i in 0..<(word.count - 1) where mergeTable[Tokenizer.pairKey(word[i], word[i + 1])] == best {
                first = word[i]; second = word[i + 1]
                break
            }
            // merge every occurrence, left to right
            next.removeAll(keepingCapacity: true)
            var i = 0
            while i < word.count {
                if i < word.count - 1 && word[i] == first && word[i + 1] == second {
                    next.append(merged)
                    i += 2
                } else {
                    next.append(word[i])
                    i += 1
                }
            }
            swap(&word, &next)
        }
        return word
    }

    // MARK: - Hugging Face files

    /// Writes `vocab.json` and `merges.txt` byte-for-byte as the `tokenizers` library
    /// saves a CLIP BPE model (compact JSON in id order; "#version: 0.2" + one merge per line).
    public func writeHF(vocabJSON: URL, merges mergesURL: URL) throws {
        var json: [UInt8] = [UInt8(ascii: "{")]
        json.reserveCapacity(vocab.count * 16)
        for (i, entry) in vocab.enumerated() {
            if i > 0 { json.append(UInt8(ascii: ",")) }
            Tokenizer.appendJSONString(entry.token, to: &json)
            json.append(UInt8(ascii: ":"))
            json += Array(String(entry.id).utf8)
        }
        json.append(UInt8(ascii: "}"))
        var text: [UInt8] = Array("#version: 0.2\n".utf8)
        text.reserveCapacity(merges.count * 12)
        for (a, b) in merges {
            text += Array(a.utf8)
            text.append(0x20)
            text += Array(b.utf8)
            text.append(0x0A)
        }
        for (url, bytes) in [(vocabJSON, json), (mergesURL, text)] {
            do {
                try Data(bytes).write(to: url, options: .atomic)
            } catch {
                throw ZeroSegError("cannot write \(url.path): \(error.localizedDescription)")
            }
        }
    }

    /// JSON string as serde_json writes it (raw UTF-8; escapes " \ and control characters).
    private static func appendJSONString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [0x5C, 0x22]
            case UInt8(ascii: "\\"): out += [0x5C, 0x5C]
            case 0x08: out += [0x5C, UInt8(ascii: "b")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0C: out += [0x5C, UInt8(ascii: "f")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 15)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    // MARK: - The bundled vocabulary

    /// The bundled `bpe_simple_vocab_16e6.txt.gz`, a resource of this package
    /// (Sources/ZeroSegText/Resources; provenance in its README.md there). `$ZEROSEG_VOCAB` names
    /// another file instead.
    public static func defaultVocabURL() throws -> URL {
        try defaultVocabURL(environment: ProcessInfo.processInfo.environment)
    }

    /// `defaultVocabURL()` with its environment made explicit (for tests).
    static func defaultVocabURL(environment: [String: String]) throws -> URL {
        if let env = environment["ZEROSEG_VOCAB"], !env.isEmpty {
            guard FileManager.default.fileExists(atPath: env) else {
                throw ZeroSegError("BPE vocabulary not found: ZEROSEG_VOCAB=\(env) does not exist")
            }
            return URL(fileURLWithPath: env)
        }
        guard let url = Bundle.module.url(forResource: "bpe_simple_vocab_16e6.txt", withExtension: "gz") else {
            throw ZeroSegError("BPE vocabulary not found: the package resource \(vocabFileName) is missing from \(Bundle.module.bundlePath)")
        }
        return url
    }

    /// The tokenizer of the bundled vocabulary, read once per process.
    public static func bundled() throws -> Tokenizer { try bundledTokenizer.get() }
    private static let bundledTokenizer = Result { try Tokenizer(bpeGzip: defaultVocabURL()) }
}

/// open_clip's pre-tokeniser pattern, as the `regex` module matches it with IGNORECASE:
/// `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
/// A hand-written scanner over code points; a position where nothing matches
/// (whitespace, and U+0345 which the regex module puts in no class) is skipped, as
/// `re.findall` does.
enum PreTokenizer {
    static let none: UInt8 = 0, letter: UInt8 = 1, number: UInt8 = 2, other: UInt8 = 3

    private static let asciiClass: [UInt8] = (0..<128).map { c -> UInt8 in
        switch c {
        case 0x41...0x5A, 0x61...0x7A: return letter
        case 0x30...0x39: return number
        case 0x09...0x0D, 0x20: return none
        default: return other
        }
    }

    private static let regexSpace = Set(UnicodeTables.regexWhitespace)

    /// Class of a code point for the three character classes of the pattern.
    static func charClass(_ c: UInt32) -> UInt8 {
        if c < 0x80 { return asciiClass[Int(c)] }
        // overrides: flat (lo, hi, class) triples, sorted
        let t = UnicodeTables.regexClassOverrides
        var lo = 0, hi = t.count / 3 - 1
        while lo <= hi {
            let mid = (lo + hi) >> 1
            if c < t[3 * mid] { hi = mid - 1 } else if c > t[3 * mid + 1] { lo = mid + 1 } else { return UInt8(t[3 * mid + 2]) }
        }
        let cat = utf8proc_category(Int32(bitPattern: c))
        switch cat {
        case UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LL, UTF8PROC_CATEGORY_LT, UTF8PROC_CATEGORY_LM, UTF8PROC_CATEGORY_LO:
            return letter
        case UTF8PROC_CATEGORY_ND, UTF8PROC_CATEGORY_NL, UTF8PROC_CATEGORY_NO:
            return number
        default:
            return regexSpace.contains(c) ? none : other
        }
    }

    /// Case-insensitive match of one pattern literal (simple case folding, as the regex module).
    @inline(__always) private static func foldEq(_ c: UInt32, _ lit: UInt8) -> Bool {
        let l = UInt32(lit)
        if c == l { return true }
        if l >= 0x61 && l <= 0x7A {
            if c == l - 0x20 { return true }
            if l == 0x73 && c == 0x17F { return true }  // ſ
        }
        return false
    }

    private static func matchLiteral(_ cps: [UInt32], _ i: Int, _ lit: [UInt8]) -> Bool {
        guard i + lit.count <= cps.count else { return false }
        for (k, l) in lit.enumerated() where !foldEq(cps[i + k], l) { return false }
        return true
    }

    private static let specials: [([UInt8], Int32)] = [
        (Array("<start_of_text>".utf8), Tokenizer.startToken),
        (Array("<end_of_text>".utf8), Tokenizer.endToken),
    ]
    private static let contractions: [[UInt8]] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"].map { Array($0.utf8) }

    /// Calls `body` for each match in order with the matched code points, and the
    /// special token id when the match is exactly `<start_of_text>` / `<end_of_text>`
    /// (open_clip's BPE cache maps those strings to themselves, hence to the special ids).
    static func forEachToken(_ cps: [UInt32], _ body: (ArraySlice<UInt32>, Int32?) -> Void) {
        let n = cps.count
        var i = 0
        scan: while i < n {
            let c = cps[i]
            if c == 0x3C {  // '<'
                for (lit, id) in specials where matchLiteral(cps, i, lit) {
                    let tok = cps[i..<(i + lit.count)]
                    let exact = zip(tok, lit).allSatisfy { $0 == UInt32($1) }
                    body(tok, exact ? id : nil)
                    i += lit.count
                    continue scan
                }
            } else if c == 0x27 {  // '
                for lit in contractions where matchLiteral(cps, i, lit) {
                    body(cps[i..<(i + lit.count)], nil)
                    i += lit.count
                    continue scan
                }
            }
            let cls = charClass(c)
            switch cls {
            case letter, other:
                var j = i + 1
                while j < n && charClass(cps[j]) == cls { j += 1 }
                body(cps[i..<j], nil)
                i = j
            case number:
                body(cps[i..<(i + 1)], nil)
                i += 1
            default:
                i += 1
            }
        }
    }
}
