import Foundation
import MultipartKit
import NIOCore
import ZeroSeg

/// One field of a request: a text, or a file (an upload, or base64 in JSON).
struct FormField: Sendable {
    var name: String
    /// The upload's file name (multipart only).
    var filename: String?
    var bytes: [UInt8]
    var isFile: Bool

    var text: String? { String(validating: bytes, as: UTF8.self) }
}

/// The fields of a request body: multipart/form-data (fields named as the CLI's options, files
/// as uploads) or application/json (an object; arrays give repeated fields; the `fileFields`
/// hold base64). One parser for every endpoint, so every endpoint reads its options the same way.
struct RequestForm: Sendable {
    var fields: [FormField]

    /// Parses `body` by its Content-Type. Errors are `APIError`s: 415 for another content type,
    /// 400 for a malformed body (one line saying what is wrong).
    static func parse(_ body: ByteBuffer, contentType: String?, fileFields: Set<String>) throws -> RequestForm {
        guard let contentType, let mediaType = contentType.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() else {
            throw APIError(.unsupportedMediaType, "the body needs a Content-Type: multipart/form-data or application/json")
        }
        switch mediaType {
        case "multipart/form-data":
            guard let boundary = parameter("boundary", of: contentType) else {
                throw APIError(.badRequest, "malformed multipart body: the Content-Type has no boundary")
            }
            return try parseMultipart(body, boundary: boundary, fileFields: fileFields)
        case "application/json":
            return try parseJSON(body, fileFields: fileFields)
        default:
            throw APIError(.unsupportedMediaType, "unsupported Content-Type \(mediaType): send multipart/form-data or application/json")
        }
    }

    /// A parameter of a header value (`multipart/form-data; boundary=xyz`, `form-data; name="a"`).
    static func parameter(_ key: String, of header: String) -> String? {
        for piece in header.split(separator: ";").dropFirst() {
            let kv = piece.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces).lowercased() == key else { continue }
            var v = kv[1].trimmingCharacters(in: .whitespaces)
            if v.count >= 2 && v.hasPrefix("\"") && v.hasSuffix("\"") { v = String(v.dropFirst().dropLast()) }
            return v
        }
        return nil
    }

    static func parseMultipart(_ body: ByteBuffer, boundary: String, fileFields: Set<String>) throws -> RequestForm {
        // RFC 2046: 1...70 characters (MultipartParser traps on an empty one).
        guard (1...70).contains(boundary.utf8.count) else {
            throw APIError(.badRequest, "malformed multipart body: the boundary must have 1 to 70 characters")
        }
        try checkPartHeaderNames(body, boundary: boundary)
        let parser = MultipartParser(boundary: boundary)
        var fields: [FormField] = []
        var headers: [(String, String)] = []
        var bytes: [UInt8] = []
        var open = false
        parser.onHeader = { name, value in headers.append((name.lowercased(), value)); open = true }
        parser.onBody = { buffer in bytes += buffer.readableBytesView; open = true }
        var failure: APIError?
        parser.onPartComplete = {
            defer { headers = []; bytes = []; open = false }
            guard failure == nil else { return }
            guard let disposition = headers.first(where: { $0.0 == "content-disposition" })?.1,
                  let name = parameter("name", of: disposition), !name.isEmpty else {
                failure = APIError(.badRequest, "malformed multipart body: a part has no Content-Disposition name")
                return
            }
            let filename = parameter("filename", of: disposition)
            fields.append(FormField(name: name, filename: filename, bytes: bytes, isFile: filename != nil || fileFields.contains(name)))
        }
        do { try parser.execute(body) } catch {
            throw APIError(.badRequest, "malformed multipart body: bad part headers or boundary")
        }
        if let failure { throw failure }
        if open { throw APIError(.badRequest, "malformed multipart body: truncated (no closing boundary)") }
        if fields.isEmpty { throw APIError(.badRequest, "malformed multipart body: no parts (is the boundary right?)") }
        return RequestForm(fields: fields)
    }

    /// A JSON value as a request may send it.
    enum JSONValue: Decodable {
        case string(String), number(String), bool(Bool), null, list([JSONValue]), object

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null }
            else if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let i = try? c.decode(Int.self) { self = .number(String(i)) }
            else if let d = try? c.decode(Double.self) { self = .number(String(d)) }
            else if let s = try? c.decode(String.self) { self = .string(s) }
            else if let l = try? c.decode([JSONValue].self) { self = .list(l) }
            else { self = .object }
        }
    }

    /// MultipartKit 4.7.1 traps on a byte >= 0x80 in a part's header name (it looks each byte up
    /// in a 128-entry table), so such a body is refused before it reaches the parser: every
    /// header block after a `--boundary` line may have only ASCII bytes before each line's colon.
    static func checkPartHeaderNames(_ body: ByteBuffer, boundary: String) throws {
        let bytes = body.readableBytesView
        let mark = Array("--\(boundary)".utf8)
        var i = bytes.startIndex
        while let start = firstIndex(of: mark, in: bytes, from: i) {
            var j = start + mark.count
            i = j
            // the rest of the boundary line, then header lines up to an empty line
            guard let eol = firstIndex(of: [13, 10], in: bytes, from: j) else { return }
            j = eol + 2
            // As the parser reads: a line ends at CR LF only (a bare LF stays in a value, but a
            // name is checked after it too, to be safe); an empty line ends the headers.
            var inName = true, lineStart = true, previous: UInt8 = 0
            while j < bytes.endIndex {
                let b = bytes[j]
                j += 1
                defer { previous = b }
                if lineStart && b == 13 { break }  // the empty line: the part's body follows
                if b == 10 { inName = true; lineStart = previous == 13; continue }
                lineStart = false
                if b == UInt8(ascii: ":") {
                    inName = false
                } else if inName && b >= 0x80 {
                    throw APIError(.badRequest, "malformed multipart body: a part's header name is not ASCII")
                }
            }
            i = max(i, j)
        }
    }

    private static func firstIndex(of needle: [UInt8], in hay: ByteBufferView, from: Int) -> Int? {
        guard !needle.isEmpty, from <= hay.endIndex - needle.count else { return nil }
        var k = from
        while k <= hay.endIndex - needle.count {
            if hay[k] == needle[0] {
                var m = 1
                while m < needle.count && hay[k + m] == needle[m] { m += 1 }
                if m == needle.count { return k }
            }
            k += 1
        }
        return nil
    }

    static func parseJSON(_ body: ByteBuffer, fileFields: Set<String>) throws -> RequestForm {
        let dict: [String: JSONValue]
        do { dict = try JSONDecoder().decode([String: JSONValue].self, from: Data(body.readableBytesView)) } catch {
            throw APIError(.badRequest, "malformed JSON body: expected an object of strings, numbers, booleans and arrays")
        }
        var fields: [FormField] = []
        func add(_ name: String, _ value: JSONValue, inList: Bool) throws {
            let isFile = fileFields.contains(name)
            switch value {
            case .string(let s):
                if isFile {
                    guard let d = Data(base64Encoded: s, options: .ignoreUnknownCharacters), !d.isEmpty else {
                        throw APIError(.badRequest, "\(name): not base64 file data")
                    }
                    fields.append(FormField(name: name, filename: nil, bytes: [UInt8](d), isFile: true))
                } else {
                    fields.append(FormField(name: name, filename: nil, bytes: Array(s.utf8), isFile: false))
                }
            case .number(let t) where !isFile:
                fields.append(FormField(name: name, filename: nil, bytes: Array(t.utf8), isFile: false))
            case .bool(let b) where !isFile:
                fields.append(FormField(name: name, filename: nil, bytes: Array((b ? "true" : "false").utf8), isFile: false))
            case .null:
                return
            case .list(let items) where !inList:
                for v in items { try add(name, v, inList: true) }
            default:
                throw APIError(.badRequest, "\(name): must be \(isFile ? "a base64 string" : "a string, number or boolean") (or an array of them)")
            }
        }
        for (name, value) in dict.sorted(by: { $0.key < $1.key }) { try add(name, value, inList: false) }
        return RequestForm(fields: fields)
    }

    // MARK: Reading fields

    /// Names present that the endpoint does not know (an error: a typo must not pass silently).
    func checkKnown(_ known: Set<String>) throws {
        if let f = fields.first(where: { !known.contains($0.name) }) {
            throw APIError(.badRequest, "unknown field \"\(f.name.prefix(64))\" (known: \(known.sorted().joined(separator: ", ")))")
        }
    }

    func all(_ name: String) -> [FormField] { fields.filter { $0.name == name } }

    /// Every text of `name` (repeated fields), each at most `maxBytes`.
    func texts(_ name: String, maxBytes: Int) throws -> [String] {
        try all(name).map { f in
            if f.isFile && f.filename != nil { throw APIError(.badRequest, "\(name): expected text, got a file") }
            guard f.bytes.count <= maxBytes else { throw APIError(.badRequest, "\(name): longer than \(maxBytes) bytes") }
            guard let t = f.text else { throw APIError(.badRequest, "\(name): not UTF-8 text") }
            return t
        }
    }

    /// The one text of `name` (nil when absent; an error when repeated).
    func text(_ name: String, maxBytes: Int) throws -> String? {
        let t = try texts(name, maxBytes: maxBytes)
        guard t.count <= 1 else { throw APIError(.badRequest, "\(name): given \(t.count) times, expected once") }
        return t.first
    }

    func int(_ name: String, maxBytes: Int) throws -> Int? {
        guard let t = try text(name, maxBytes: maxBytes) else { return nil }
        guard let v = Int(t.trimmingCharacters(in: .whitespaces)) else { throw APIError(.badRequest, "\(name): not an integer: \"\(t.prefix(40))\"") }
        return v
    }

    func float(_ name: String, maxBytes: Int) throws -> Double? {
        guard let t = try text(name, maxBytes: maxBytes) else { return nil }
        guard let v = Double(t.trimmingCharacters(in: .whitespaces)), v.isFinite else {
            throw APIError(.badRequest, "\(name): not a finite number: \"\(t.prefix(40))\"")
        }
        return v
    }

    /// "true"/"false" (also 1/0, yes/no, on/off as HTML forms send them).
    func bool(_ name: String, maxBytes: Int) throws -> Bool? {
        guard let t = try text(name, maxBytes: maxBytes)?.trimmingCharacters(in: .whitespaces).lowercased() else { return nil }
        switch t {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: throw APIError(.badRequest, "\(name): expected true or false, not \"\(t.prefix(40))\"")
        }
    }

    /// A value of `T` from its raw value (an enum).
    func choice<T: RawRepresentable & CaseIterable>(_ name: String, _ type: T.Type, maxBytes: Int) throws -> T? where T.RawValue == String {
        guard let t = try text(name, maxBytes: maxBytes) else { return nil }
        guard let v = T(rawValue: t) else {
            throw APIError(.badRequest, "\(name): \"\(t.prefix(40))\" is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return v
    }

    /// The files of `name`.
    func files(_ name: String) throws -> [FormField] {
        try all(name).map { f in
            guard f.isFile else { throw APIError(.badRequest, "\(name): expected a file upload") }
            guard !f.bytes.isEmpty else { throw APIError(.badRequest, "\(name): the file is empty") }
            return f
        }
    }
}
