import CUTF8Proc
import ZeroSegCore

/// open_clip 3.3.0's default ("lower") text clean-up, ported to Unicode scalars:
///
///     whitespace_clean(basic_clean(text)).lower()
///     basic_clean(t)      = html.unescape(html.unescape(ftfy.fix_text(t))).strip()
///     whitespace_clean(t) = " ".join(t.split()).strip()
///
/// `ftfy.fix_text` (ftfy 6.3.1, default `TextFixerConfig`) is ported step by step
/// except `fix_encoding` (mojibake repair), which is out of scope; see vocab/README.md.
/// All steps work on arrays of code points (`UInt32`), never on `Character`s, so
/// the results follow Python's code-point semantics.  Unicode data come from utf8proc,
/// corrected where needed by the generated `UnicodeTables`.
enum TextClean {
    /// Unicode version of the utf8proc linked at run time; `UnicodeTables` are exact
    /// only for `UnicodeTables.utf8procUnicodeVersion`.
    static var linkedUTF8ProcUnicodeVersion: String { String(cString: utf8proc_unicode_version()) }

    // MARK: open_clip

    /// `_clean_lower` of open_clip: the code points that the pre-tokeniser sees.
    static func cleanLower(_ text: String) -> [UInt32] {
        var cps = text.unicodeScalars.map(\.value)
        cps = ftfyFixText(cps)
        cps = htmlUnescape(htmlUnescape(cps))
        // basic_clean's strip() is subsumed by whitespace_clean's split/join.
        cps = splitJoin(cps)
        return pythonLower(cps)
    }

    /// `" ".join(t.split())` with CPython's `str.isspace` (the result needs no strip()).
    static func splitJoin(_ cps: [UInt32]) -> [UInt32] {
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var pendingSpace = false
        for c in cps {
            if isPythonSpace(c) {
                pendingSpace = !out.isEmpty
            } else {
                if pendingSpace { out.append(0x20); pendingSpace = false }
                out.append(c)
            }
        }
        return out
    }

    // MARK: Python str.lower

    /// CPython's `str.lower`: full lowercase mapping (U+0130 -> "i\u{307}") and the
    /// Final_Sigma rule for U+03A3.
    static func pythonLower(_ cps: [UInt32]) -> [UInt32] {
        var out: [UInt32] = []
        out.reserveCapacity(cps.count + 4)
        for (i, c) in cps.enumerated() {
            if c < 0x80 {
                out.append(c >= 0x41 && c <= 0x5A ? c + 0x20 : c)
            } else if c == 0x130 {
                out.append(0x69); out.append(0x307)
            } else if c == 0x3A3 {
                out.append(finalSigma(cps, i) ? 0x3C2 : 0x3C3)
            } else {
                out.append(UInt32(bitPattern: utf8proc_tolower(Int32(bitPattern: c))))
            }
        }
        return out
    }

    /// CPython `handle_capital_sigma`:
    /// \p{cased}\p{case-ignorable}* U+03A3 !(\p{case-ignorable}* \p{cased})
    private static func finalSigma(_ cps: [UInt32], _ i: Int) -> Bool {
        var j = i - 1
        while j >= 0 && isCaseIgnorable(cps[j]) { j -= 1 }
        guard j >= 0 && isCased(cps[j]) else { return false }
        j = i + 1
        while j < cps.count && isCaseIgnorable(cps[j]) { j += 1 }
        return j == cps.count || !isCased(cps[j])
    }

    static func isCaseIgnorable(_ c: UInt32) -> Bool { inRanges(c, UnicodeTables.caseIgnorableRanges) }
    static func isCased(_ c: UInt32) -> Bool { inRanges(c, UnicodeTables.casedRanges) }

    /// Binary search in a flat sorted array of (lo, hi) pairs.
    static func inRanges(_ c: UInt32, _ table: [UInt32]) -> Bool {
        var lo = 0, hi = table.count / 2 - 1
        while lo <= hi {
            let mid = (lo + hi) >> 1
            if c < table[2 * mid] { hi = mid - 1 } else if c > table[2 * mid + 1] { lo = mid + 1 } else { return true }
        }
        return false
    }

    static func isPythonSpace(_ c: UInt32) -> Bool {
        if c < 0x80 { return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) }
        return pythonSpaceSet.contains(c)
    }

    private static let pythonSpaceSet = Set(UnicodeTables.pythonWhitespace)

    // MARK: ftfy.fix_text

    /// `ftfy.fix_text(text)` with the default config, minus `fix_encoding`.
    /// The text is fixed in segments ending at "\n"; once a segment contains "<",
    /// `unescape_html="auto"` is switched off for it and for every later segment.
    static func ftfyFixText(_ cps: [UInt32]) -> [UInt32] {
        let maxDecodeLength = 1_000_000
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var unescape = true
        var pos = 0
        while pos < cps.count {
            var textbreak = (cps[pos...].firstIndex(of: 0x0A) ?? (cps.count - 1)) + 1
            if textbreak - pos > maxDecodeLength { textbreak = pos + maxDecodeLength }
            let segment = Array(cps[pos..<textbreak])
            if unescape && segment.contains(0x3C) { unescape = false }
            out += ftfyFixSegment(segment, unescapeHTML: unescape)
            pos = textbreak
        }
        return out
    }

    /// `ftfy.fix_and_explain`: apply the fixers until the text stops changing.
    static func ftfyFixSegment(_ segment: [UInt32], unescapeHTML: Bool) -> [UInt32] {
        var text = segment
        while true {
            let orig = text
            if unescapeHTML { text = ftfyUnescapeHTML(text) }
            // fix_encoding: out of scope (mojibake repair)
            text = fixC1Controls(text)
            text = translate(text, ligatureMap)
            text = translate(text, widthMap)
            text = uncurlQuotes(text)
            text = fixLineBreaks(text)
            // fix_surrogates: Swift strings never hold surrogates
            text = removeTerminalEscapes(text)
            text = removeControlChars(text)
            text = nfc(text)
            if text == orig { return text }
        }
    }

    private static func buildMap(_ flat: [UInt32]) -> [UInt32: [UInt32]] {
        var map: [UInt32: [UInt32]] = [:]
        var i = 0
        while i < flat.count {
            map[flat[i]] = Array(flat[(i + 2)..<(i + 2 + Int(flat[i + 1]))])
            i += 5
        }
        return map
    }

    private static let ligatureMap = buildMap(UnicodeTables.ftfyLigatures)
    private static let widthMap = buildMap(UnicodeTables.ftfyWidthMap)
    private static let controlChars = Set(UnicodeTables.ftfyControlChars)
    private static let c1Map: [UInt32: UInt32] = {
        var m: [UInt32: UInt32] = [:]
        for i in stride(from: 0, to: UnicodeTables.ftfyC1Map.count, by: 2) {
            m[UnicodeTables.ftfyC1Map[i]] = UnicodeTables.ftfyC1Map[i + 1]
        }
        return m
    }()

    /// `str.translate` with a code point -> string table.
    private static func translate(_ cps: [UInt32], _ map: [UInt32: [UInt32]]) -> [UInt32] {
        guard cps.contains(where: { $0 >= 0x80 && map[$0] != nil }) else { return cps }
        var out: [UInt32] = []
        out.reserveCapacity(cps.count + 8)
        for c in cps {
            if c >= 0x80, let r = map[c] { out += r } else { out.append(c) }
        }
        return out
    }

    /// fix_c1_controls: U+0080...U+009F as sloppy-windows-1252.
    static func fixC1Controls(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(where: { $0 >= 0x80 && $0 <= 0x9F }) else { return cps }
        return cps.map { ($0 >= 0x80 && $0 <= 0x9F) ? c1Map[$0]! : $0 }
    }

    /// uncurl_quotes: [\u02bc\u2018-\u201b] -> ', [\u201c-\u201f] -> "
    static func uncurlQuotes(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(where: { $0 == 0x2BC || ($0 >= 0x2018 && $0 <= 0x201F) }) else { return cps }
        return cps.map { c in
            if c == 0x2BC || (c >= 0x2018 && c <= 0x201B) { return 0x27 }
            if c >= 0x201C && c <= 0x201F { return 0x22 }
            return c
        }
    }

    /// fix_line_breaks: \r\n, \r, U+2028, U+2029, U+0085 -> \n
    static func fixLineBreaks(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(where: { $0 == 0x0D || $0 == 0x2028 || $0 == 0x2029 || $0 == 0x85 }) else { return cps }
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var i = 0
        while i < cps.count {
            let c = cps[i]
            if c == 0x0D {
                out.append(0x0A)
                if i + 1 < cps.count && cps[i + 1] == 0x0A { i += 1 }
            } else if c == 0x2028 || c == 0x2029 || c == 0x85 {
                out.append(0x0A)
            } else {
                out.append(c)
            }
            i += 1
        }
        return out
    }

    /// remove_terminal_escapes: "\x1b\[((?:\d|;)*)([a-zA-Z])" removed (\d = Python's Unicode decimal).
    static func removeTerminalEscapes(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(0x1B) else { return cps }
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var i = 0
        while i < cps.count {
            if cps[i] == 0x1B && i + 1 < cps.count && cps[i + 1] == 0x5B {
                var j = i + 2
                while j < cps.count && (cps[j] == 0x3B || isPythonDecimal(cps[j])) { j += 1 }
                if j < cps.count && isASCIILetter(cps[j]) {
                    i = j + 1
                    continue
                }
            }
            out.append(cps[i])
            i += 1
        }
        return out
    }

    static func isASCIILetter(_ c: UInt32) -> Bool { (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) }

    /// `str.isdecimal` / `re`'s `\d` of CPython.
    static func isPythonDecimal(_ c: UInt32) -> Bool {
        if c < 0x80 { return c >= 0x30 && c <= 0x39 }
        guard c <= 0x10FFFF else { return false }
        return utf8proc_category(Int32(c)) == UTF8PROC_CATEGORY_ND && !notDecimalSet.contains(c)
    }

    private static let notDecimalSet = Set(UnicodeTables.notDecimal)

    /// remove_control_chars
    static func removeControlChars(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(where: { controlChars.contains($0) }) else { return cps }
        return cps.filter { !controlChars.contains($0) }
    }

    // MARK: NFC

    private static let nfcInertSet = Set(UnicodeTables.nfcInert)

    /// `unicodedata.normalize("NFC", s)` of CPython, computed with utf8proc.  The few
    /// code points CPython does not know but utf8proc treats as combining marks are
    /// inert starters for CPython, so the text is normalised piecewise around them.
    static func nfc(_ cps: [UInt32]) -> [UInt32] {
        // Everything below U+0300 is NFC-stable and never combines with what precedes it.
        guard cps.contains(where: { $0 >= 0x300 }) else { return cps }
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var start = 0
        for (i, c) in cps.enumerated() where c >= 0x10EFD && nfcInertSet.contains(c) {
            out += utf8procNFC(cps[start..<i])
            out.append(c)
            start = i + 1
        }
        out += utf8procNFC(cps[start..<cps.count])
        return out
    }

    private static func utf8procNFC(_ cps: ArraySlice<UInt32>) -> [UInt32] {
        if cps.isEmpty { return [] }
        var utf8: [UInt8] = []
        utf8.reserveCapacity(cps.count * 2)
        appendUTF8(cps, to: &utf8)
        let options = utf8proc_option_t(rawValue: UTF8PROC_STABLE.rawValue | UTF8PROC_COMPOSE.rawValue)
        return utf8.withUnsafeBufferPointer { src -> [UInt32] in
            let needed = utf8proc_decompose(src.baseAddress, src.count, nil, 0, options)
            guard needed >= 0 else { return Array(cps) }
            var buf = [Int32](repeating: 0, count: max(needed, 1))
            let n1 = buf.withUnsafeMutableBufferPointer {
                utf8proc_decompose(src.baseAddress, src.count, $0.baseAddress, needed, options)
            }
            guard n1 == needed else { return Array(cps) }
            let n2 = buf.withUnsafeMutableBufferPointer {
                utf8proc_normalize_utf32($0.baseAddress, n1, options)
            }
            guard n2 >= 0 else { return Array(cps) }
            return buf[0..<n2].map { UInt32(bitPattern: $0) }
        }
    }

    /// UTF-8 encoding of code points (all are valid scalars: they come from a String).
    static func appendUTF8<C: Collection>(_ cps: C, to out: inout [UInt8]) where C.Element == UInt32 {
        for c in cps {
            switch c {
            case 0..<0x80:
                out.append(UInt8(c))
            case 0x80..<0x800:
                out.append(UInt8(0xC0 | (c >> 6)))
                out.append(UInt8(0x80 | (c & 0x3F)))
            case 0x800..<0x10000:
                out.append(UInt8(0xE0 | (c >> 12)))
                out.append(UInt8(0x80 | ((c >> 6) & 0x3F)))
                out.append(UInt8(0x80 | (c & 0x3F)))
            default:
                out.append(UInt8(0xF0 | (c >> 18)))
                out.append(UInt8(0x80 | ((c >> 12) & 0x3F)))
                out.append(UInt8(0x80 | ((c >> 6) & 0x3F)))
                out.append(UInt8(0x80 | (c & 0x3F)))
            }
        }
    }

    // MARK: HTML

    /// name (ASCII bytes, with ';' where HTML5 has it) -> replacement code points
    private static func parseEntities(_ source: String) -> [[UInt8]: [UInt32]] {
        var table: [[UInt8]: [UInt32]] = [:]
        for line in source.utf8.split(separator: UInt8(ascii: "\n")) {
            let parts = line.split(separator: UInt8(ascii: " "))
            let name = Array(parts[0])
            table[name] = parts.dropFirst().map { hex in
                hex.reduce(UInt32(0)) { acc, b in
                    acc * 16 + UInt32(b <= UInt8(ascii: "9") ? b - UInt8(ascii: "0") : b - UInt8(ascii: "A") + 10)
                }
            }
        }
        return table
    }

    static let html5: [[UInt8]: [UInt32]] = parseEntities(HTMLEntities.html5Source)
    private static let ftfyUpper: [[UInt8]: [UInt32]] = parseEntities(HTMLEntities.ftfyUpperSource)

    private static func isASCIIAlnum(_ c: UInt32) -> Bool {
        (c >= 0x30 && c <= 0x39) || isASCIILetter(c)
    }

    /// ftfy.fixes.unescape_html: `&#?[0-9A-Za-z]{1,24};` replaced when it is an
    /// HTML5 name ending in ';', one of ftfy's upper-case names, or a numeric
    /// reference that html.unescape decodes completely.
    static func ftfyUnescapeHTML(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(0x26) else { return cps }
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        var i = 0
        while i < cps.count {
            if cps[i] == 0x26 {
                var j = i + 1
                let numeric = j < cps.count && cps[j] == 0x23
                if numeric { j += 1 }
                var k = j
                while k < cps.count && isASCIIAlnum(cps[k]) { k += 1 }
                let runLength = k - j
                if runLength >= 1 && runLength <= 24 && k < cps.count && cps[k] == 0x3B {
                    let match = Array(cps[i...k])  // "&...;"
                    if !numeric {
                        let name = match.dropFirst().map { UInt8($0) }
                        if let r = html5[name] ?? ftfyUpper[name] {
                            out += r
                        } else {
                            out += match
                        }
                    } else {
                        let un = htmlUnescape(match)
                        out += un.contains(0x3B) ? match : un
                    }
                    i = k + 1
                    continue
                }
            }
            out.append(cps[i])
            i += 1
        }
        return out
    }

    private static func isDigit(_ c: UInt32) -> Bool { c >= 0x30 && c <= 0x39 }
    private static func hexValue(_ c: UInt32) -> UInt32? {
        if c >= 0x30 && c <= 0x39 { return c - 0x30 }
        if c >= 0x41 && c <= 0x46 { return c - 0x41 + 10 }
        if c >= 0x61 && c <= 0x66 { return c - 0x61 + 10 }
        return nil
    }

    private static let invalidCodepoints: Set<UInt32> = {
        var s = Set<UInt32>([0xB])
        s.formUnion(0x1...0x8); s.formUnion(0xE...0x1F); s.formUnion(0x7F...0x9F); s.formUnion(0xFDD0...0xFDEF)
        for plane in UInt32(0)...0x10 { s.insert(plane << 16 | 0xFFFE); s.insert(plane << 16 | 0xFFFF) }
        return s
    }()

    /// html._replace_charref for a numeric reference with value `num`
    /// (`num` saturates above 0x10FFFF, which maps to U+FFFD like Python's big ints).
    private static func numericCharref(_ num: UInt32) -> [UInt32] {
        switch num {
        case 0x00: return [0xFFFD]
        case 0x0D: return [0x0D]
        case 0x80...0x9F: return [c1Map[num]!]  // same table as ftfy's sloppy-windows-1252
        default: break
        }
        if (num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF { return [0xFFFD] }
        if invalidCodepoints.contains(num) { return [] }
        return [num]
    }

    /// Python's `html.unescape` (3.11): `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`
    static func htmlUnescape(_ cps: [UInt32]) -> [UInt32] {
        guard cps.contains(0x26) else { return cps }
        var out: [UInt32] = []
        out.reserveCapacity(cps.count)
        let n = cps.count
        var i = 0
        while i < n {
            let c = cps[i]
            guard c == 0x26, i + 1 < n else { out.append(c); i += 1; continue }
            let next = cps[i + 1]
            if next == 0x23 {
                // numeric
                var j = i + 2
                var num: UInt32 = 0
                if j < n && isDigit(cps[j]) {
                    while j < n && isDigit(cps[j]) {
                        num = min(num * 10 + (cps[j] - 0x30), 0x110000)
                        j += 1
                    }
                } else if j + 1 < n && (cps[j] == 0x78 || cps[j] == 0x58) && hexValue(cps[j + 1]) != nil {
                    j += 1
                    while j < n, let h = hexValue(cps[j]) {
                        num = min(num * 16 + h, 0x110000)
                        j += 1
                    }
                } else {
                    out.append(c); i += 1; continue
                }
                if j < n && cps[j] == 0x3B { j += 1 }
                out += numericCharref(num)
                i = j
                continue
            }
            // named: [^\t\n\f <&#;]{1,32};?
            func isNameChar(_ x: UInt32) -> Bool {
                x != 0x09 && x != 0x0A && x != 0x0C && x != 0x20 && x != 0x3C && x != 0x26 && x != 0x23 && x != 0x3B
            }
            var j = i + 1
            while j < n && j - (i + 1) < 32 && isNameChar(cps[j]) { j += 1 }
            if j == i + 1 { out.append(c); i += 1; continue }
            if j < n && cps[j] == 0x3B { j += 1 }
            let s = cps[(i + 1)..<j]
            out += replaceNamed(s)
            i = j
        }
        return out
    }

    /// Named branch of html._replace_charref: exact name, else the longest prefix
    /// (length >= 2) that is a name, else unchanged.
    private static func replaceNamed(_ s: ArraySlice<UInt32>) -> [UInt32] {
        // Names are ASCII: only the leading ASCII part of s can match.
        let asciiPrefix = s.prefix(while: { $0 < 0x80 }).map { UInt8($0) }
        if asciiPrefix.count == s.count, let r = html5[asciiPrefix] { return r }
        var x = min(s.count - 1, asciiPrefix.count)
        while x > 1 {
            if let r = html5[Array(asciiPrefix[0..<x])] {
                return r + s.dropFirst(x)
            }
            x -= 1
        }
        return [0x26] + s
    }
}
