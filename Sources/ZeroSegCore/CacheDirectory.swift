import Foundation

/// zeroseg's own cache folder (class embeddings, feature grids, synthetic models).
public enum CacheDirectory {
    /// `$XDG_CACHE_HOME/zeroseg`, else `~/.cache/zeroseg`.
    public static func url() -> URL { url(environment: ProcessInfo.processInfo.environment) }

    public static func url(environment env: [String: String]) -> URL {
        if let x = env["XDG_CACHE_HOME"], !x.isEmpty { return URL(fileURLWithPath: x).appendingPathComponent("zeroseg") }
        if let h = env["HOME"], !h.isEmpty { return URL(fileURLWithPath: h).appendingPathComponent(".cache/zeroseg") }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/zeroseg")
    }
}
