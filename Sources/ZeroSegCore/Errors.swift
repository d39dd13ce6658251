#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Every error zeroseg reports to a user: one line, saying what and where, and a `kind` so that
/// callers can tell failures apart (the `zeroseg` command maps kinds to exit codes).
///
/// Messages speak of the library's own terms (parameters, files), never of command-line flags.
public struct ZeroSegError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What went wrong, coarsely.
    public enum Kind: Sendable, Equatable, Hashable {
        /// A value given to the library is out of range or inconsistent with another; `parameter`
        /// names it in library terms (e.g. "shortSide", "classes") when there is one.
        case invalidArgument(parameter: String?)
        /// An input file (image, label map, class list, templates, masks, prompt file) or folder is
        /// missing, unreadable or malformed; `file` is its path when known.
        case badInput(file: String?)
        /// The model cannot be loaded or had: missing or corrupt checkpoint, config or vocabulary,
        /// or a hub model that is not available.
        case badModel
        /// Writing failed (output folder, file); `file` is the path when known.
        case io(file: String?)
        /// Valid, but not supported by zeroseg (an image format, a model configuration).
        case unsupported
        /// An input is larger than a stated limit (pixels of an image, bytes, classes); the
        /// message names the limit.
        case limitExceeded
        /// Anything else.
        case other
    }

    public let message: String
    public let kind: Kind
    /// The system error (`errno`) under an `.io` failure, when known (e.g. ENOSPC).
    public var systemCode: Int32? = nil

    /// An error of kind `.other`.
    public init(_ message: String) { self.init(message, kind: .other) }

    public init(_ message: String, kind: Kind) {
        self.message = message
        self.kind = kind
    }

    public static func invalidArgument(_ message: String, parameter: String? = nil) -> ZeroSegError {
        ZeroSegError(message, kind: .invalidArgument(parameter: parameter))
    }
    public static func badInput(_ message: String, file: String? = nil) -> ZeroSegError {
        ZeroSegError(message, kind: .badInput(file: file))
    }
    public static func badModel(_ message: String) -> ZeroSegError { ZeroSegError(message, kind: .badModel) }
    public static func io(_ message: String, file: String? = nil, systemCode: Int32? = nil) -> ZeroSegError {
        var e = ZeroSegError(message, kind: .io(file: file))
        e.systemCode = systemCode
        return e
    }
    public static func unsupported(_ message: String) -> ZeroSegError { ZeroSegError(message, kind: .unsupported) }
    public static func limitExceeded(_ message: String) -> ZeroSegError { ZeroSegError(message, kind: .limitExceeded) }

    public var description: String { message }

    /// The same message with another kind.
    public func with(kind: Kind) -> ZeroSegError {
        var e = ZeroSegError(message, kind: kind)
        e.systemCode = systemCode
        return e
    }

    /// Whether a write failed for a reason that every later write to the same place shares: no
    /// space (ENOSPC, EDQUOT), a read-only file system (EROFS), no permission (EACCES, EPERM), a
    /// device error (EIO). A run that writes many files stops at the first such failure.
    public var isStorageFailure: Bool {
        guard case .io = kind, let c = systemCode else { return false }
        return [ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EIO].contains(c)
    }
    /// Whether the kind is a generic one (`.other`, `.invalidArgument`) that a caller with more
    /// context may make more precise (an error while reading a file is about that file).
    public var isGeneric: Bool {
        switch kind {
        case .other, .invalidArgument: return true
        default: return false
        }
    }
}

/// Runs `body`; a `ZeroSegError` of a generic kind (`isGeneric`) that it throws is given `kind`
/// (e.g. everything that fails while a model folder loads is `.badModel`, unless it already says
/// `.unsupported` or `.io`). Other errors pass unchanged.
package func classifyingErrors<T>(as kind: ZeroSegError.Kind, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as ZeroSegError where e.isGeneric {
        throw e.with(kind: kind)
    }
}
