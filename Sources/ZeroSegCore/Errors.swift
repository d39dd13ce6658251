/// Every error zeroseg reports to a user: one line, saying what and where.
public struct ZeroSegError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
