import Foundation
import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegCLIP

/// The classes to segment: each class has one or more names (synonyms, `"pavement|sidewalk"`);
/// optional background names form one extra class whose pixels are labelled 255.
public struct ClassSet: Sendable, Equatable {
    public let classes: [[String]]
    public let background: [String]

    /// Maximum number of classes: label values 0...253 (255 is background/unlabelled).
    public static let maxClasses = 254

    public init(classes: [[String]], background: [String] = []) throws {
        guard !classes.isEmpty else { throw ZeroSegError("the class list is empty") }
        guard classes.count <= Self.maxClasses else {
            throw ZeroSegError("\(classes.count) classes: at most \(Self.maxClasses) are supported")
        }
        var seen = Set<String>()
        for names in classes + (background.isEmpty ? [] : [background]) {
            guard !names.isEmpty else { throw ZeroSegError("a class has no name") }
            for n in names {
                guard !n.isEmpty else { throw ZeroSegError("empty class name") }
                guard seen.insert(n).inserted else { throw ZeroSegError("class name \"\(n)\" appears twice") }
            }
        }
        self.classes = classes
        self.background = background
    }

    /// "road,car,pavement|sidewalk": comma-separated classes, `|` between synonyms.
    public static func parse(_ s: String, background: String? = nil) throws -> ClassSet {
        let bg = try backgroundList(background)
        do {
            return try ClassSet(classes: splitList(s, what: "the class list").map { try splitNames($0) }, background: bg)
        } catch let e as ZeroSegError where e.isGeneric {
            throw e.with(kind: .invalidArgument(parameter: "classes"))
        }
    }

    /// One class per line (blank lines and lines starting with # skipped), `|` between synonyms.
    public static func load(_ url: URL, background: String? = nil) throws -> ClassSet {
        let bg = try backgroundList(background)  // a bad background list is not the file's fault
        return try classifyingErrors(as: .badInput(file: url.path)) { try read(url, background: bg) }
    }

    static func backgroundList(_ s: String?) throws -> [String] {
        guard let s else { return [] }
        do { return try splitList(s, what: "the background list") } catch let e as ZeroSegError {
            throw e.with(kind: .invalidArgument(parameter: "background"))
        }
    }

    static func read(_ url: URL, background: [String]) throws -> ClassSet {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw ZeroSegError("cannot read class file \(url.path)")
        }
        return try parseFile(data, source: url.path, background: background)
    }

    /// A class file's contents (`source` names it in errors).
    static func parseFile(_ data: Data, source: String, background: [String]) throws -> ClassSet {
        guard let text = String(data: data, encoding: .utf8) else { throw ZeroSegError("class file \(source) is not UTF-8") }
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !lines.isEmpty else { throw ZeroSegError("class file \(source) has no classes") }
        return try ClassSet(classes: lines.map { try splitNames($0) }, background: background)
    }

    static func splitList(_ s: String, what: String) throws -> [String] {
        let parts = s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.allSatisfy(\.isEmpty) else { throw ZeroSegError("\(what) is empty") }
        if parts.contains(where: \.isEmpty) { throw ZeroSegError("\(what) has an empty name: \"\(s)\"") }
        return parts
    }

    static func splitNames(_ s: String) throws -> [String] {
        let names = s.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        if names.contains(where: \.isEmpty) { throw ZeroSegError("empty synonym in \"\(s)\"") }
        return names
    }

    /// Display name of a class: its first name.
    public var displayNames: [String] { classes.map { $0[0] } }

    /// Every name, in order (classes' names, then background names), and which class owns it
    /// (`classes.count` for background).
    public var queries: [(name: String, owner: Int)] {
        var out: [(String, Int)] = []
        for (i, names) in classes.enumerated() { for n in names { out.append((n, i)) } }
        for n in background { out.append((n, classes.count)) }
        return out
    }
}
