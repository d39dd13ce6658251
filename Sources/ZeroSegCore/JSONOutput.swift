import Foundation

/// How zeroseg writes JSON: keys sorted and slashes unescaped, so that the same value always gives
/// the same bytes (outputs can be compared byte for byte).
public enum JSONOutput {
    /// Pretty-printed (two-space indent), with a final newline: the form of every JSON file
    /// zeroseg writes.
    public static func data<T: Encodable>(_ value: T) throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try e.encode(value) + Data("\n".utf8)
    }

    /// One line without a newline (what commands print on stdout).
    public static func line<T: Encodable>(_ value: T) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(value), as: UTF8.self)
    }

    /// Decodes what `data` or `line` wrote.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try JSONDecoder().decode(type, from: data)
    }

    /// The current time as ISO 8601 (UTC, seconds), as the records' `date`.
    public static func now() -> String { ISO8601DateFormatter().string(from: Date()) }
}

/// An optional that is written as JSON `null` when absent (plain optionals are left out), for
/// values whose key the schema always has (e.g. a metric that is 0/0).
@propertyWrapper
public struct Nullable<Value: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var wrappedValue: Value?
    public init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        wrappedValue = c.decodeNil() ? nil : try c.decode(Value.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let wrappedValue { try c.encode(wrappedValue) } else { try c.encodeNil() }
    }
}

extension KeyedDecodingContainer {
    /// A missing key reads as nil (a `Nullable` is written either way).
    public func decode<V>(_ type: Nullable<V>.Type, forKey key: Key) throws -> Nullable<V> {
        try decodeIfPresent(type, forKey: key) ?? Nullable(wrappedValue: nil)
    }
}
