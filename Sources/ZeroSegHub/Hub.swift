import Foundation
import ZeroSegCore
import ZeroSegCLIP
#if canImport(Glibc)
import Glibc
#endif

// The Hugging Face hub: model ids, the settings read from the environment, and the on-disk cache in
// huggingface_hub's layout, so a cache filled by Python tools is used as it is, and the files zeroseg
// downloads (HubDownload.swift) are reused by Python tools:
//
//     $HF_HUB_CACHE/models--ORG--NAME/
//         blobs/<etag>                       the files' contents (etag: sha256 for LFS files, git blob sha1 else)
//         blobs/<etag>.incomplete            a download in progress (resumed with an HTTP Range request)
//         snapshots/<commit>/<file>          relative symlinks: ../../blobs/<etag>
//         refs/<revision>                    the commit a branch or tag pointed to (no newline)
//         .no_exist/<commit>/<file>          an empty file: <file> does not exist at <commit>
//     $HF_HUB_CACHE/.locks/models--ORG--NAME/<etag>.lock

/// A model repository on the hub and a revision (branch, tag or commit hash): `ORG/NAME[@REVISION]`.
public struct HubRepo: Hashable, Sendable, CustomStringConvertible {
    public let id: String
    public let revision: String

    public static let defaultRevision = "main"

    /// Parses `ORG/NAME` or `ORG/NAME@REVISION` (the revision may contain `/`, e.g. `refs/pr/5`).
    public init(parsing spec: String, revision explicit: String? = nil) throws {
        var id = spec, revision: String? = nil
        if let at = spec.firstIndex(of: "@") {
            id = String(spec[..<at])
            revision = String(spec[spec.index(after: at)...])
            if revision!.isEmpty { throw ZeroSegError("\(spec): empty revision after @") }
        }
        if let explicit {
            if let revision, revision != explicit {
                throw ZeroSegError.invalidArgument("\(spec) names revision \(revision) but the revision argument says \(explicit)", parameter: "revision")
            }
            revision = explicit
        }
        guard HubRepo.isValidID(id) else {
            throw ZeroSegError("\(id) is not a Hugging Face model id (ORG/NAME, letters, digits, - _ .)")
        }
        let rev = revision ?? HubRepo.defaultRevision
        guard HubRepo.isValidRevision(rev) else { throw ZeroSegError("\(rev) is not a valid revision") }
        self.id = id
        self.revision = rev
    }

    public init(id: String, revision: String = HubRepo.defaultRevision) throws {
        try self.init(parsing: id, revision: revision)
    }

    /// `ORG/NAME` with hub-valid characters (no `..`, `--`, leading or trailing `-`/`.`), or
    /// `ORG/NAME@REV`: what `--model` takes as a hub id rather than a path.
    public static func looksLikeID(_ s: String) -> Bool {
        let id = s.firstIndex(of: "@").map { String(s[..<$0]) } ?? s
        return isValidID(id)
    }

    static func isValidID(_ id: String) -> Bool {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        for p in parts {
            guard !p.isEmpty, p.count <= 96 else { return false }
            guard p.unicodeScalars.allSatisfy({ ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0)))
                    || $0 == "-" || $0 == "_" || $0 == "." }) else { return false }
            if p.contains("--") || p.contains("..") { return false }
            if let f = p.first, f == "-" || f == "." { return false }
            if let l = p.last, l == "-" || l == "." { return false }
        }
        return true
    }

    static func isValidRevision(_ r: String) -> Bool {
        !r.isEmpty && r.count <= 256 && !r.hasPrefix("/") && !r.hasSuffix("/")
            && !r.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0 == "." || $0 == ".." })
            && !r.unicodeScalars.contains(where: { $0.value < 0x21 || $0 == "\\" })
    }

    /// Whether the revision is a full commit hash (then it names a snapshot directly).
    public var isCommitHash: Bool { HubRepo.isCommitHash(revision) }

    static func isCommitHash(_ s: String) -> Bool {
        s.utf8.count == 40 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// `models--ORG--NAME`, the repository's folder in the cache.
    public var folderName: String { "models--" + id.replacingOccurrences(of: "/", with: "--") }

    /// `ORG/NAME`, or `ORG/NAME@REV` when the revision is not `main`.
    public var description: String { revision == HubRepo.defaultRevision ? id : "\(id)@\(revision)" }
}

/// Where the hub and its cache are, read from an environment dictionary (the process's by default)
/// the way huggingface_hub reads it.
public struct HubSettings: Sendable {
    /// `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`.
    public var cacheDirectory: URL
    /// `$HF_ENDPOINT` without a trailing `/`, else `https://huggingface.co`.
    public var endpoint: String
    /// `$HF_TOKEN`, else `$HUGGING_FACE_HUB_TOKEN`, else the file `$HF_TOKEN_PATH` (default `$HF_HOME/token`).
    public var token: String?
    /// `$HF_HUB_OFFLINE` (or `$TRANSFORMERS_OFFLINE`) is 1, ON, YES or TRUE: never a request, only the cache.
    public var offline: Bool
    /// Seconds to wait for a connection, or for the next bytes of an answer.
    public var timeout: TimeInterval = 10
    /// Tries in a row that may fail for a passing reason (the connection breaks or stalls, the
    /// server answers 408, 429, 500, 502, 503 or 504) before giving up, for each question to the
    /// hub and each file's download (each try resumes where the last stopped; a try that brought
    /// bytes starts the count again).
    public var maxAttempts = 5
    /// Seconds before the first new try; doubled for each further failure in a row (`RetrySchedule`).
    public var retryDelay: TimeInterval = 1
    /// The longest wait between tries, also for a server's `Retry-After`.
    public var maxRetryDelay: TimeInterval = 30

    /// The schedule of new tries these settings make (exponential backoff with jitter).
    public var retrySchedule: RetrySchedule {
        RetrySchedule(attempts: maxAttempts, baseDelay: retryDelay, maxDelay: maxRetryDelay)
    }

    public static let defaultEndpoint = "https://huggingface.co"

    public init(environment env: [String: String] = ProcessInfo.processInfo.environment) {
        func value(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        let homeDir = value("HOME") ?? FileManager.default.homeDirectoryForCurrentUser.path
        func expand(_ p: String) -> String {
            if p == "~" { return homeDir }
            if p.hasPrefix("~/") { return homeDir + p.dropFirst(1) }
            return p
        }
        let hfHome = expand(value("HF_HOME") ?? ((value("XDG_CACHE_HOME") ?? homeDir + "/.cache") + "/huggingface"))
        let cache = value("HF_HUB_CACHE") ?? value("HUGGINGFACE_HUB_CACHE") ?? hfHome + "/hub"
        cacheDirectory = URL(fileURLWithPath: expand(cache), isDirectory: true).standardizedFileURL
        var ep = value("HF_ENDPOINT") ?? HubSettings.defaultEndpoint
        while ep.hasSuffix("/") { ep.removeLast() }
        endpoint = ep
        func clean(_ s: String?) -> String? {
            guard let s else { return nil }
            let t = s.replacingOccurrences(of: "\r", with: "").replacingOccurrences(of: "\n", with: "")
                .trimmingCharacters(in: .whitespaces)
            return t.isEmpty ? nil : t
        }
        if let t = clean(value("HF_TOKEN") ?? value("HUGGING_FACE_HUB_TOKEN")) {
            token = t
        } else {
            let path = expand(value("HF_TOKEN_PATH") ?? hfHome + "/token")
            token = clean((try? Data(contentsOf: URL(fileURLWithPath: path))).map { String(decoding: $0, as: UTF8.self) })
        }
        let truthy: Set<String> = ["1", "ON", "YES", "TRUE"]
        offline = truthy.contains((value("HF_HUB_OFFLINE") ?? value("TRANSFORMERS_OFFLINE") ?? "").uppercased())
    }
}

/// The files zeroseg takes from a CLIP repository.
public enum HubFiles {
    /// At least one of these must exist (transformers' CLIP config, OpenCLIP's).
    public static let configs = ["config.json", "open_clip_config.json"]
    /// The weights: the first of these that exists (and whose layout's config exists), in this order of
    /// preference (`CheckpointFiles.preference`).
    public static let weights = ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    /// Taken when they exist.
    public static let optional = ["vocab.json", "merges.txt", "preprocessor_config.json"]
}

/// The hub cache on disk (huggingface_hub's layout).
public struct HubCache: Sendable {
    public let root: URL

    public init(root: URL) { self.root = root }
    public init(settings: HubSettings) { self.root = settings.cacheDirectory }

    public func repoFolder(_ repo: HubRepo) -> URL { root.appendingPathComponent(repo.folderName, isDirectory: true) }

    /// The commit a revision stands for in the cache: itself for a commit hash, else `refs/<revision>`.
    public func commit(for repo: HubRepo) -> String? {
        if repo.isCommitHash { return repo.revision }
        let ref = repoFolder(repo).appendingPathComponent("refs").appendingPathComponent(repo.revision)
        guard let d = try? Data(contentsOf: ref) else { return nil }
        let s = String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return s.isEmpty ? nil : s
    }

    public func snapshotFolder(_ repo: HubRepo, commit: String) -> URL {
        repoFolder(repo).appendingPathComponent("snapshots", isDirectory: true).appendingPathComponent(commit, isDirectory: true)
    }

    /// Whether `file` is in the snapshot (a symlink whose blob is there, or a plain file).
    public func has(_ file: String, _ repo: HubRepo, commit: String) -> Bool {
        var isDir: ObjCBool = false
        let p = snapshotFolder(repo, commit: commit).appendingPathComponent(file).path
        return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && !isDir.boolValue
    }

    /// Whether the cache records that `file` does not exist at `commit` (`.no_exist/<commit>/<file>`).
    public func knownMissing(_ file: String, _ repo: HubRepo, commit: String) -> Bool {
        FileManager.default.fileExists(atPath: repoFolder(repo).appendingPathComponent(".no_exist")
            .appendingPathComponent(commit).appendingPathComponent(file).path)
    }

    /// The snapshot of `repo` if the cache has a config and a weights file for it; never a request.
    public func usableSnapshot(_ repo: HubRepo) -> URL? {
        guard let commit = commit(for: repo), HubRepo.isCommitHash(commit) else { return nil }
        // as CheckpointFiles chooses: a weights file with its layout's config
        let hf = has("config.json", repo, commit: commit), oc = has("open_clip_config.json", repo, commit: commit)
        guard CheckpointFiles.preference.contains(where: { ($0.layout == .huggingFace ? hf : oc) && has($0.file, repo, commit: commit) })
        else { return nil }
        return snapshotFolder(repo, commit: commit)
    }

    /// What the cache lacks for `repo`, for messages: "no refs/main", "no snapshot abc…", "no weights in …".
    func whyNotUsable(_ repo: HubRepo) -> String {
        let folder = repoFolder(repo)
        guard FileManager.default.fileExists(atPath: folder.path) else { return "it is not in the Hugging Face cache (\(root.path))" }
        guard let commit = commit(for: repo) else {
            return "the Hugging Face cache has no refs/\(repo.revision) for it (\(folder.path))"
        }
        let snap = snapshotFolder(repo, commit: commit)
        guard FileManager.default.fileExists(atPath: snap.path) else { return "the Hugging Face cache has no snapshot \(commit) for it" }
        if !HubFiles.configs.contains(where: { has($0, repo, commit: commit) }) { return "its cached snapshot \(snap.path) has no config.json" }
        return "its cached snapshot \(snap.path) has no weights (\(HubFiles.weights.joined(separator: ", ")))"
    }

    // MARK: writing, as huggingface_hub does

    public func blobURL(_ repo: HubRepo, etag: String) -> URL {
        repoFolder(repo).appendingPathComponent("blobs", isDirectory: true).appendingPathComponent(etag)
    }

    /// Records `refs/<revision>` = commit (no newline), atomically; nothing for a commit-hash revision.
    func writeRef(_ repo: HubRepo, commit: String) throws {
        guard repo.revision != commit else { return }
        let ref = repoFolder(repo).appendingPathComponent("refs").appendingPathComponent(repo.revision)
        if let d = try? Data(contentsOf: ref), String(decoding: d, as: UTF8.self) == commit { return }
        try atomicWrite(Data(commit.utf8), to: ref)
    }

    /// Marks `file` as absent at `commit` (`.no_exist/<commit>/<file>`, empty), best effort.
    func writeNoExist(_ file: String, _ repo: HubRepo, commit: String) {
        let u = repoFolder(repo).appendingPathComponent(".no_exist").appendingPathComponent(commit).appendingPathComponent(file)
        guard !FileManager.default.fileExists(atPath: u.path) else { return }
        try? FileManager.default.createDirectory(at: u.deletingLastPathComponent(), withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: u.path, contents: Data())
    }

    /// `snapshots/<commit>/<file>` -> `../../blobs/<etag>` (one more `../` per folder in `file`).
    func link(_ file: String, _ repo: HubRepo, commit: String, etag: String) throws {
        let pointer = snapshotFolder(repo, commit: commit).appendingPathComponent(file)
        let fm = FileManager.default
        try fm.createDirectory(at: pointer.deletingLastPathComponent(), withIntermediateDirectories: true)
        let depth = 2 + file.split(separator: "/").count - 1
        let target = String(repeating: "../", count: depth) + "blobs/" + etag
        if let existing = try? fm.destinationOfSymbolicLink(atPath: pointer.path), existing == target { return }
        try? fm.removeItem(at: pointer)  // a stale or broken link
        do {
            try fm.createSymbolicLink(atPath: pointer.path, withDestinationPath: target)
        } catch {
            throw ZeroSegError("cannot create the symlink \(pointer.path): \(errorText(error))")
        }
    }

    /// `CACHEDIR.TAG` at the cache root, as huggingface_hub writes it (best effort).
    func tagCacheDirectory() {
        let tag = root.appendingPathComponent("CACHEDIR.TAG")
        guard !FileManager.default.fileExists(atPath: tag.path) else { return }
        let text = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by huggingface_hub.\n# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n"
        try? Data(text.utf8).write(to: tag)
    }

    /// An exclusive lock on `.locks/models--ORG--NAME/<etag>.lock` (the file huggingface_hub locks), held while
    /// `body` runs, so two processes do not write the same blob at once.
    func withLock<T>(_ repo: HubRepo, etag: String, _ body: () throws -> T) throws -> T {
        let url = root.appendingPathComponent(".locks").appendingPathComponent(repo.folderName).appendingPathComponent(etag + ".lock")
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ZeroSegError("cannot open the lock file \(url.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { throw ZeroSegError("cannot lock \(url.path): \(String(cString: strerror(errno)))") }
        }
        defer { _ = flock(fd, LOCK_UN) }
        return try body()
    }
}

/// Writes `data` atomically (Core's writer), creating the parent directories first.
func atomicWrite(_ data: Data, to url: URL) throws {
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try writeDataAtomically(data, to: url)
}

/// A short text for an error: ZeroSegError's message, else the system's description.
func errorText(_ error: Error) -> String {
    if let e = error as? ZeroSegError { return e.message }
    let ns = error as NSError
    if ns.domain == NSCocoaErrorDomain, let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain,
       let c = POSIXErrorCode(rawValue: Int32(u.code)) {
        return String(cString: strerror(c.rawValue))
    }
    return ns.localizedDescription
}
