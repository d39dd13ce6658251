import Foundation
import ZeroSegCore

/// The contact sheet of search hits (filled in with the imaging layer's contact sheet).
public enum SearchSheet {
    public static func write(_ hits: [SearchHit], query: String, to url: URL) throws {
        throw ZeroSegError.unsupported("contact sheets are not built yet")
    }
}
