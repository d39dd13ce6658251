import Foundation
import Synchronization
import Testing
@testable import ZeroSegCore
@testable import ZeroSegFormats
@testable import ZeroSegImaging
@testable import ZeroSegText
@testable import ZeroSegCLIP
@testable import ZeroSegHub
@testable import ZeroSegSegmentation
@testable import ZeroSegTuning

/// Reference data written by scripts/reference/make_tokenizer_corpus.py.
struct TokenizerCorpus: Decodable {
    struct Item: Decodable {
        let text: String
        let ids: [Int32]
    }
    struct FileDigest: Decodable {
        let bytes: Int
        let crc32: UInt32
    }
    struct HFFiles: Decodable {
        let vocab_json: FileDigest
        let merges_txt: FileDigest
    }
    let generator: String
    let open_clip: String
    let ftfy: String
    let context_length: Int
    let items: [Item]
    let hf_files: HFFiles?
}

enum TokenizerFixtures {
    static let regenerate = "regenerate with: python scripts/reference/make_tokenizer_corpus.py"

    /// The vocabulary in the checkout (Sources/ZeroSegText/Resources), found from this source file.
    static let vocabURL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .appendingPathComponent("../../Sources/ZeroSegText/Resources/bpe_simple_vocab_16e6.txt.gz")
        .standardizedFileURL

    static let corpus: Result<TokenizerCorpus, any Error> = Result {
        guard let url = Bundle.module.url(forResource: "tokenizer_corpus", withExtension: "json", subdirectory: "Fixtures") else {
            throw ZeroSegError("Fixtures/tokenizer_corpus.json missing from the test bundle; \(regenerate)")
        }
        return try JSONDecoder().decode(TokenizerCorpus.self, from: Data(contentsOf: url))
    }

    static let tokenizer: Result<Tokenizer, any Error> = Result { try Tokenizer(bpeGzip: vocabURL) }

    static func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("zeroseg-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// CRC-32 (zlib's polynomial), to compare written files with the fixture.
    static func crc32(_ data: Data) -> UInt32 {
        let table: [UInt32] = (0..<256).map { n in
            var c = UInt32(n)
            for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            return c
        }
        var crc: UInt32 = 0xFFFF_FFFF
        for b in data { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// Compares a tokenizer with the corpus; returns a failure report or nil.
    static func mismatchReport(_ tok: Tokenizer, _ corpus: TokenizerCorpus, label: String) -> String? {
        var bad: [(TokenizerCorpus.Item, [Int32])] = []
        for item in corpus.items {
            let got = try! tok.tokenize(item.text, contextLength: corpus.context_length)
            if got != item.ids { bad.append((item, got)) }
        }
        if bad.isEmpty { return nil }
        var lines = ["\(label): \(bad.count) of \(corpus.items.count) corpus strings differ from open_clip \(corpus.open_clip) (\(regenerate))"]
        for (item, got) in bad.prefix(5) {
            lines.append("  text \(item.text.debugDescription.prefix(200))")
            lines.append("    open_clip \(item.ids)")
            lines.append("    swift     \(got)")
        }
        return lines.joined(separator: "\n")
    }
}

@Suite("Tokenizer")
struct TokenizerTests {
    @Test("every corpus string gives open_clip's ids")
    func corpusIdentical() throws {
        let corpus = try TokenizerFixtures.corpus.get()
        let tok = try TokenizerFixtures.tokenizer.get()
        #expect(corpus.items.count >= 2000, "corpus too small: \(corpus.items.count); \(TokenizerFixtures.regenerate)")
        #expect(corpus.open_clip == "3.3.0" && corpus.ftfy == "6.3.1")
        let report = TokenizerFixtures.mismatchReport(tok, corpus, label: "gzip vocabulary")
        #expect(report == nil, Comment(rawValue: report ?? ""))
        #expect(tok.vocabularySize == 49408)
    }

    @Test("start/end tokens and special tokens in text")
    func specialTokens() throws {
        let tok = try TokenizerFixtures.tokenizer.get()
        #expect(Tokenizer.startToken == 49406 && Tokenizer.endToken == 49407)
        #expect(try tok.tokenize("") == [49406, 49407])
        #expect(tok.encode("   \t\n") == [])
        #expect(tok.encode("<start_of_text>") == [49406])
        #expect(tok.encode("<END_OF_TEXT>") == [49407])
        #expect(try tok.tokenize("a photo of a cat.") == [49406, 320, 1125, 539, 320, 2368, 269, 49407])
    }

    @Test("truncation keeps the end token last, as open_clip.tokenize")
    func truncation() throws {
        let tok = try TokenizerFixtures.tokenizer.get()
        let text = Array(repeating: "cat", count: 200).joined(separator: " ")
        let encoded = tok.encode(text)
        #expect(encoded.count == 200)
        let ids = try tok.tokenize(text)
        #expect(ids.count == 77)
        #expect(ids.first == Tokenizer.startToken && ids.last == Tokenizer.endToken)
        #expect(Array(ids[1..<76]) == Array(encoded[0..<75]))
        #expect(try tok.tokenize(text, contextLength: 5) == [49406, 2368, 2368, 2368, 49407])
        #expect(try tok.tokenize(text, contextLength: 1) == [49407])
        #expect(try tok.tokenizeReportingTruncation(text).truncated)
        // 75 words fit exactly, 76 do not
        let fits = Array(repeating: "a", count: 75).joined(separator: " ")
        #expect(try tok.tokenizeReportingTruncation(fits) == (ids: [49406] + Array(repeating: 320, count: 75) + [49407], truncated: false))
        let over = fits + " b"
        #expect(try tok.tokenizeReportingTruncation(over).truncated)
        #expect(try tok.tokenize(over).count == 77 && tok.tokenize(over).last == 49407)
        #expect(try tok.tokenize(text, contextLength: 300).count == 202)
    }

    @Test("vocab.json's fast reader gives JSONDecoder's result, or nil so that JSONDecoder decides")
    func vocabJSONFastReader() throws {
        // the real vocabulary as the tokenizers library writes it (49408 entries, escapes included)
        let dir = try TokenizerFixtures.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let vocabURL = dir.appendingPathComponent("vocab.json")
        try TokenizerFixtures.tokenizer.get().writeHF(vocabJSON: vocabURL, merges: dir.appendingPathComponent("merges.txt"))
        let data = try Data(contentsOf: vocabURL)
        let fast = try #require(VocabJSON.parseFlatObject([UInt8](data)), "the fast reader refused tokenizers' vocab.json")
        #expect(fast == (try JSONDecoder().decode([String: Int].self, from: data)))
        #expect(fast.count == 49408)
        // accepted: the reader's answer must be JSONDecoder's
        let accepted = ["{}", " {\n \"a\" : 1 ,\t\"b\":-2 }\r\n", #"{"\u00e9\ud83d\ude00\n\"\\\/\b\f\r\t":3}"#,
                        #"{"\u0000":0,"x":123456789012345}"#, "{\"é</w>\":7}"]
        for s in accepted {
            let f = VocabJSON.parseFlatObject(Array(s.utf8))
            #expect(f != nil, "refused \(s.debugDescription)")
            #expect(f == (try? JSONDecoder().decode([String: Int].self, from: Data(s.utf8))), "\(s.debugDescription)")
        }
        // refused (JSONDecoder decides: some of these it accepts, some not)
        let refused = [#"{"a":1,"a":2}"#, #"{"a":1.0}"#, #"{"a":01}"#, #"{"a":1,}"#, #"{"\ud800":1}"#, #"{"\udc00":1}"#,
                       #"{"a":[1]}"#, #"{"a":1} x"#, #"{"a":1e2}"#, "[1]", "{\"a\t\":1}", #"{"a":1234567890123456}"#,
                       #"{"a":"1"}"#, #"{"a" 1}"#, #"{"a":1"#, #"{"\x":1}"#, #"{"\u12":1}"#, ""]
        for s in refused { #expect(VocabJSON.parseFlatObject(Array(s.utf8)) == nil, "accepted \(s.debugDescription)") }
        #expect(VocabJSON.parseFlatObject([0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D]) == nil, "invalid UTF-8 accepted")
    }

    @Test("merges.txt's fast line split agrees with Python's str.split() on every line it takes")
    func mergeLineFastPath() throws {
        let dir = try TokenizerFixtures.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let mergesURL = dir.appendingPathComponent("merges.txt")
        try TokenizerFixtures.tokenizer.get().writeHF(vocabJSON: dir.appendingPathComponent("vocab.json"), merges: mergesURL)
        let lines = try [UInt8](Data(contentsOf: mergesURL)).split(separator: 0x0A).dropFirst()  // after "#version"
        var fast = 0
        for line in lines {
            let general = try #require(Tokenizer.splitMerge(line))
            if let f = Tokenizer.splitSimpleMerge(line) {
                fast += 1
                let same = f.0 == general.0 && f.1 == general.1
                #expect(same, "\(String(decoding: line, as: UTF8.self).debugDescription)")
            }
        }
        #expect(fast == lines.count, "every CLIP merge line is simple")
        // lines the fast path must leave to the general one (whitespace other than one ASCII space)
        for s in ["a  b", " a b", "a b ", "a\tb", "a\u{A0}b", "a b\u{85}", "\u{3000}a b", "a\u{2009}b c", "ab", "a b c", "a\u{1C}b"] {
            #expect(Tokenizer.splitSimpleMerge(ArraySlice(Array(s.utf8))) == nil, "\(s.debugDescription)")
        }
        // and lines it takes: non-ASCII symbols that are not whitespace
        for s in ["\u{A1}\u{AC} \u{C4}\u{120}", "a</w> \u{E9}"] {
            let line = ArraySlice(Array(s.utf8))
            let f = try #require(Tokenizer.splitSimpleMerge(line), "\(s.debugDescription)"), g = try #require(Tokenizer.splitMerge(line))
            let same = f.0 == g.0 && f.1 == g.1
            #expect(same, "\(s.debugDescription)")
        }
    }

    @Test("HF vocab.json/merges.txt: written like tokenizers does, same ids as the gzip file")
    func huggingFaceFiles() throws {
        let corpus = try TokenizerFixtures.corpus.get()
        let tok = try TokenizerFixtures.tokenizer.get()
        let dir = try TokenizerFixtures.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let vocabURL = dir.appendingPathComponent("vocab.json")
        let mergesURL = dir.appendingPathComponent("merges.txt")
        try tok.writeHF(vocabJSON: vocabURL, merges: mergesURL)
        let vocabData = try Data(contentsOf: vocabURL)
        let mergesData = try Data(contentsOf: mergesURL)
        let digests = try #require(corpus.hf_files, "fixture has no hf_files; \(TokenizerFixtures.regenerate)")
        #expect(vocabData.count == digests.vocab_json.bytes)
        #expect(TokenizerFixtures.crc32(vocabData) == digests.vocab_json.crc32,
                "vocab.json differs from what tokenizers writes")
        #expect(mergesData.count == digests.merges_txt.bytes)
        #expect(TokenizerFixtures.crc32(mergesData) == digests.merges_txt.crc32,
                "merges.txt differs from what tokenizers writes")

        let hf = try Tokenizer(vocabJSON: vocabURL, merges: mergesURL)
        #expect(hf.vocabularySize == tok.vocabularySize)
        let report = TokenizerFixtures.mismatchReport(hf, corpus, label: "HF vocab.json + merges.txt")
        #expect(report == nil, Comment(rawValue: report ?? ""))

        // and writing again from the HF-loaded tokenizer gives the same bytes
        let vocab2 = dir.appendingPathComponent("vocab2.json"), merges2 = dir.appendingPathComponent("merges2.txt")
        try hf.writeHF(vocabJSON: vocab2, merges: merges2)
        #expect(try Data(contentsOf: vocab2) == vocabData)
        #expect(try Data(contentsOf: merges2) == mergesData)
    }

    private static func expectOneLineError(_ body: () throws -> Void, containing needle: String,
                                           sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("expected a ZeroSegError containing \"\(needle)\"", sourceLocation: sourceLocation)
        } catch let error as ZeroSegError {
            #expect(error.message.contains(needle), "message: \(error.message)", sourceLocation: sourceLocation)
            #expect(!error.message.contains("\n"), "message is not one line: \(error.message)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected ZeroSegError, got \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("missing or corrupt vocabulary files throw one-line ZeroSegErrors")
    func badVocabularies() throws {
        let dir = try TokenizerFixtures.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = dir.appendingPathComponent("nope.txt.gz")
        Self.expectOneLineError({ _ = try Tokenizer(bpeGzip: missing) }, containing: "not found")

        let empty = dir.appendingPathComponent("empty.gz")
        try Data().write(to: empty)
        Self.expectOneLineError({ _ = try Tokenizer(bpeGzip: empty) }, containing: "corrupt")

        let garbage = dir.appendingPathComponent("garbage.gz")
        try Data((0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) }).write(to: garbage)
        Self.expectOneLineError({ _ = try Tokenizer(bpeGzip: garbage) }, containing: "corrupt")

        let real = try Data(contentsOf: TokenizerFixtures.vocabURL)
        let cut = dir.appendingPathComponent("cut.gz")
        try real.prefix(real.count / 3).write(to: cut)
        Self.expectOneLineError({ _ = try Tokenizer(bpeGzip: cut) }, containing: "truncated")

        var flipped = real
        flipped[flipped.count / 2] ^= 0xFF
        flipped[flipped.count / 2 + 1] ^= 0x5A
        let flippedURL = dir.appendingPathComponent("flipped.gz")
        try flipped.write(to: flippedURL)
        do {
            _ = try Tokenizer(bpeGzip: flippedURL)
            Issue.record("a damaged gzip file loaded")
        } catch let error as ZeroSegError {
            #expect(!error.message.contains("\n"))
        }

        // HF files
        let vocabURL = dir.appendingPathComponent("vocab.json"), mergesURL = dir.appendingPathComponent("merges.txt")
        try TokenizerFixtures.tokenizer.get().writeHF(vocabJSON: vocabURL, merges: mergesURL)
        Self.expectOneLineError({ _ = try Tokenizer(vocabJSON: missing, merges: mergesURL) }, containing: "not found")
        Self.expectOneLineError({ _ = try Tokenizer(vocabJSON: vocabURL, merges: missing) }, containing: "not found")
        let badJSON = dir.appendingPathComponent("bad.json")
        try Data("{\"a\": [1, 2".utf8).write(to: badJSON)
        Self.expectOneLineError({ _ = try Tokenizer(vocabJSON: badJSON, merges: mergesURL) }, containing: "corrupt")
        let noSpecials = dir.appendingPathComponent("nospecials.json")
        try Data("{\"a\": 0}".utf8).write(to: noSpecials)
        Self.expectOneLineError({ _ = try Tokenizer(vocabJSON: noSpecials, merges: mergesURL) }, containing: "startoftext")
        let badMerges = dir.appendingPathComponent("bad-merges.txt")
        try Data("#version: 0.2\ni n\nthree parts here\n".utf8).write(to: badMerges)
        Self.expectOneLineError({ _ = try Tokenizer(vocabJSON: vocabURL, merges: badMerges) }, containing: "line 3")
        let unknownMerge = dir.appendingPathComponent("unknown-merges.txt")
        try Data("#version: 0.2\n\u{4E00} \u{4E01}\n".utf8).write(to: unknownMerge)
        Self.expectOneLineError({ _ = try Tokenizer(vocabJSON: vocabURL, merges: unknownMerge) }, containing: "missing")
    }

    @Test("defaultVocabURL: the package resource, identical to the checkout's file; ZEROSEG_VOCAB overrides")
    func locatingTheVocabulary() throws {
        let found = try Tokenizer.defaultVocabURL(environment: [:])
        #expect(found.lastPathComponent == Tokenizer.vocabFileName)
        #expect(try Data(contentsOf: found) == Data(contentsOf: TokenizerFixtures.vocabURL))

        let env = try Tokenizer.defaultVocabURL(environment: ["ZEROSEG_VOCAB": TokenizerFixtures.vocabURL.path])
        #expect(env.path == TokenizerFixtures.vocabURL.path)
        Self.expectOneLineError({
            _ = try Tokenizer.defaultVocabURL(environment: ["ZEROSEG_VOCAB": "/nonexistent/v.gz"])
        }, containing: "ZEROSEG_VOCAB")
    }

    @Test("one tokenizer used from many threads gives the same ids")
    func multithreaded() throws {
        let corpus = try TokenizerFixtures.corpus.get()
        let tok = try Tokenizer(bpeGzip: TokenizerFixtures.vocabURL)  // fresh: empty cache
        let items = corpus.items
        let threads = 8
        let results = Mutex<[Int: Int]>([:])  // thread -> mismatches
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var bad = 0
            // every thread walks the whole corpus from a different starting point
            for k in 0..<items.count {
                let item = items[(k + t * items.count / threads) % items.count]
                if try! tok.tokenize(item.text) != item.ids { bad += 1 }
            }
            results.withLock { $0[t] = bad }
        }
        let all = results.withLock { $0 }
        #expect(all.count == threads)
        #expect(all.values.allSatisfy { $0 == 0 }, "mismatches per thread: \(all)")
    }

    /// Optional extended differential test on a file made by
    /// `python scripts/reference/make_tokenizer_corpus.py --stress PATH [COUNT] [SEED]`.
    @Test("random stress strings (ZEROSEG_TOKENIZER_STRESS=file)",
          .enabled(if: ProcessInfo.processInfo.environment["ZEROSEG_TOKENIZER_STRESS"] != nil))
    func stress() throws {
        let path = try #require(ProcessInfo.processInfo.environment["ZEROSEG_TOKENIZER_STRESS"])
        let corpus = try JSONDecoder().decode(TokenizerCorpus.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        let report = TokenizerFixtures.mismatchReport(try TokenizerFixtures.tokenizer.get(), corpus, label: path)
        #expect(report == nil, Comment(rawValue: report ?? ""))
        print("stress: \(corpus.items.count) strings checked")
    }

    @Test("utf8proc has the Unicode version the generated tables were made for")
    func unicodeVersion() {
        #expect(TextClean.linkedUTF8ProcUnicodeVersion == UnicodeTables.utf8procUnicodeVersion,
                "rerun python scripts/reference/gen_tokenizer_tables.py and make_tokenizer_corpus.py")
    }
}
