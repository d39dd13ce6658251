/// A fast reader for `vocab.json`'s usual form: one flat JSON object of string -> integer.
///
/// Foundation's `JSONDecoder` spends ~0.1 s on CLIP's 49408-entry vocabulary, a third of a warm
/// process's time outside the encoders. This reader accepts a strict subset of JSON (an object
/// whose values are integers without fraction or exponent, no repeated key) and returns nil on
/// anything else, so that the caller falls back to `JSONDecoder`, which then decides: the result
/// is always the one `JSONDecoder().decode([String: Int].self, from:)` gives.
enum VocabJSON {
    /// The object's entries, or nil when `bytes` is not in the subset (then ask `JSONDecoder`).
    static func parseFlatObject(_ bytes: [UInt8]) -> [String: Int]? {
        guard String(validating: bytes, as: UTF8.self) != nil else { return nil }
        return bytes.withUnsafeBufferPointer { p -> [String: Int]? in
            var reader = Reader(p: p)
            return reader.object()
        }
    }

    private struct Reader {
        let p: UnsafeBufferPointer<UInt8>
        var i = 0
        var scratch: [UInt8] = []

        init(p: UnsafeBufferPointer<UInt8>) { self.p = p }

        mutating func skipSpace() {
            while i < p.count, p[i] == 0x20 || p[i] == 0x09 || p[i] == 0x0A || p[i] == 0x0D { i += 1 }
        }

        mutating func take(_ byte: UInt8) -> Bool {
            skipSpace()
            guard i < p.count, p[i] == byte else { return false }
            i += 1
            return true
        }

        mutating func object() -> [String: Int]? {
            guard take(0x7B) else { return nil }  // {
            var out: [String: Int] = [:]
            out.reserveCapacity(p.count / 12)
            if take(0x7D) { skipSpace(); return i == p.count ? out : nil }  // }
            while true {
                skipSpace()
                guard let key = string(), take(0x3A), let value = integer() else { return nil }  // :
                guard out.updateValue(value, forKey: key) == nil else { return nil }  // a repeated key: JSONDecoder decides
                if take(0x2C) { continue }  // ,
                guard take(0x7D) else { return nil }
                skipSpace()
                return i == p.count ? out : nil
            }
        }

        /// A JSON string at `i` (the bytes between the quotes are valid UTF-8: checked for the whole input).
        mutating func string() -> String? {
            guard i < p.count, p[i] == 0x22 else { return nil }
            i += 1
            let start = i
            while i < p.count, p[i] != 0x22, p[i] != 0x5C, p[i] >= 0x20 { i += 1 }
            guard i < p.count else { return nil }
            if p[i] == 0x22 {  // no escapes: the common case
                defer { i += 1 }
                return String(decoding: UnsafeBufferPointer(rebasing: p[start..<i]), as: UTF8.self)
            }
            scratch.removeAll(keepingCapacity: true)
            scratch.append(contentsOf: p[start..<i])
            while i < p.count {
                let c = p[i]
                if c == 0x22 { i += 1; return String(decoding: scratch, as: UTF8.self) }
                if c < 0x20 { return nil }
                if c != 0x5C { scratch.append(c); i += 1; continue }
                i += 1
                guard i < p.count else { return nil }
                let e = p[i]
                i += 1
                switch e {
                case 0x22, 0x5C, 0x2F: scratch.append(e)
                case 0x62: scratch.append(0x08)  // \b
                case 0x66: scratch.append(0x0C)  // \f
                case 0x6E: scratch.append(0x0A)  // \n
                case 0x72: scratch.append(0x0D)  // \r
                case 0x74: scratch.append(0x09)  // \t
                case 0x75:  // \uXXXX, a surrogate pair as two
                    guard var scalar = hex4() else { return nil }
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        guard i + 1 < p.count, p[i] == 0x5C, p[i + 1] == 0x75 else { return nil }
                        i += 2
                        guard let low = hex4(), low >= 0xDC00 && low < 0xE000 else { return nil }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let u = Unicode.Scalar(scalar) else { return nil }  // a lone low surrogate
                    scratch.append(contentsOf: Array(String(Character(u)).utf8))
                default: return nil
                }
            }
            return nil
        }

        mutating func hex4() -> UInt32? {
            guard i + 4 <= p.count else { return nil }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = p[i]
                let d: UInt8
                switch c {
                case 0x30...0x39: d = c - 0x30
                case 0x41...0x46: d = c - 0x41 + 10
                case 0x61...0x66: d = c - 0x61 + 10
                default: return nil
                }
                v = v << 4 | UInt32(d)
                i += 1
            }
            return v
        }

        /// An integer without fraction, exponent or leading zero, of at most 15 digits.
        mutating func integer() -> Int? {
            skipSpace()
            var negative = false
            if i < p.count, p[i] == 0x2D { negative = true; i += 1 }  // -
            let start = i
            var v = 0
            while i < p.count, p[i] >= 0x30, p[i] <= 0x39, i - start < 15 { v = v * 10 + Int(p[i] - 0x30); i += 1 }
            let digits = i - start
            guard digits > 0, !(digits > 1 && p[start] == 0x30) else { return nil }
            if i < p.count, [0x2E, 0x65, 0x45].contains(p[i]) || (p[i] >= 0x30 && p[i] <= 0x39) { return nil }  // . e E, too long
            return negative ? -v : v
        }
    }
}
