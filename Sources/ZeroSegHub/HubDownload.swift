import Crypto
import ZeroSegCore
import ZeroSegCLIP
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif

/// Finds CLIP models on the Hugging Face hub: in the cache first (never a request), else by downloading
/// them into the cache as huggingface_hub does (HEAD `{endpoint}/{id}/resolve/{revision}/{file}` for the
/// commit, ETag and size; GET from the CDN it redirects to; resume with Range; every file verified:
/// sha256 for LFS files, git blob sha1 for the others).
public struct Hub {
    public var settings: HubSettings
    public var cache: HubCache { HubCache(settings: settings) }
    /// Short messages for the user (one line each, no newline): what is downloaded, from where, to where.
    public var log: (String) -> Void
    /// Draw a progress bar per file on stderr (only used when stderr is a terminal).
    public var showProgress: Bool

    public init(settings: HubSettings = HubSettings(), showProgress: Bool = isatty(STDERR_FILENO) != 0,
                log: @escaping (String) -> Void = { _ in }) {
        self.settings = settings
        self.showProgress = showProgress && isatty(STDERR_FILENO) != 0
        self.log = log
    }

    public init(environment: [String: String], showProgress: Bool = isatty(STDERR_FILENO) != 0,
                log: @escaping (String) -> Void = { _ in }) {
        self.init(settings: HubSettings(environment: environment), showProgress: showProgress, log: log)
    }

    /// The cached snapshot of `repo` (config + weights), else downloads it (unless offline).
    public func snapshot(_ repo: HubRepo) throws -> URL {
        if let dir = cache.usableSnapshot(repo) { return dir }
        return try fetch(repo).snapshot
    }

    /// What `fetch` did.
    public struct FetchResult: Sendable {
        public let snapshot: URL
        public let commit: String
        /// The files in the snapshot that zeroseg uses.
        public let files: [String]
        /// The ones this call downloaded, and their bytes.
        public let downloaded: [String]
        public let downloadedBytes: Int64
    }

    /// Makes the cache hold `repo`'s CLIP files: asks the hub which commit the revision is at (no request when
    /// the revision is a commit hash whose files are all cached), then downloads what is missing.
    /// Offline (`HF_HUB_OFFLINE`), answers from the cache or fails.
    @discardableResult
    public func fetch(_ repo: HubRepo) throws -> FetchResult {
        let cache = self.cache
        if settings.offline {
            guard let dir = cache.usableSnapshot(repo) else {
                throw ZeroSegError("\(repo) is not available offline: \(cache.whyNotUsable(repo)), and HF_HUB_OFFLINE is set")
            }
            let commit = dir.lastPathComponent
            let files = (HubFiles.configs + HubFiles.weights + HubFiles.optional).filter { cache.has($0, repo, commit: commit) }
            return FetchResult(snapshot: dir, commit: commit, files: files, downloaded: [], downloadedBytes: 0)
        }
        let client = HubClient(settings: settings, repo: repo)
        var commit: String? = repo.isCommitHash ? repo.revision : nil
        var planned: [HubFileInfo] = []
        var present: [String] = []

        /// Whether `file` exists in the repository; plans its download when it is not cached yet.
        func probe(_ file: String) throws -> Bool {
            if let c = commit {
                if cache.has(file, repo, commit: c) { present.append(file); return true }
                if cache.knownMissing(file, repo, commit: c) { return false }
            }
            switch try client.head(file, revision: commit ?? repo.revision) {
            case .found(let info):
                if commit == nil { commit = info.commit }
                if cache.has(file, repo, commit: info.commit) { present.append(file); return true }
                if FileManager.default.fileExists(atPath: cache.blobURL(repo, etag: info.etag).path) {
                    // the blob is cached already (another commit has the same file): only the link is missing
                    try cache.link(file, repo, commit: info.commit, etag: info.etag)
                    present.append(file)
                    return true
                }
                planned.append(info)
                present.append(file)
                return true
            case .missing(let c):
                if commit == nil, let c { commit = c }
                if let c = commit { cache.writeNoExist(file, repo, commit: c) }
                return false
            }
        }

        var configs = Set<String>()
        for f in HubFiles.configs where try probe(f) { configs.insert(f) }
        guard !configs.isEmpty else {
            if commit == nil { throw ZeroSegError("\(repo.id) was not found on \(settings.endpoint) (404)") }
            throw ZeroSegError("\(repo) has neither config.json nor open_clip_config.json: not a CLIP model")
        }
        // As CheckpointFiles chooses: a weights file counts only when its layout's config is there.
        let candidates = CheckpointFiles.preference
            .filter { configs.contains($0.layout == .huggingFace ? "config.json" : "open_clip_config.json") }.map(\.file)
        var weights: String?
        for f in candidates where try probe(f) { weights = f; break }
        guard weights != nil else {
            throw ZeroSegError("\(repo) has no weights (none of \(candidates.joined(separator: ", ")))")
        }
        for f in HubFiles.optional { _ = try probe(f) }
        guard let commit else { throw ZeroSegError("\(settings.endpoint) did not say which commit \(repo) is at") }

        var bytes: Int64 = 0
        if !planned.isEmpty {
            let total = planned.reduce(Int64(0)) { $0 + ($1.size ?? 0) }
            log("downloading \(repo) (\(planned.count) file\(planned.count == 1 ? "" : "s"), \(formatBytes(total))) from \(settings.endpoint) into \(cache.root.path)")
            cache.tagCacheDirectory()
            // small files first: a repository error shows before the long download
            for info in planned.sorted(by: { ($0.size ?? 0) < ($1.size ?? 0) }) {
                bytes += try client.download(info, cache: cache, progress: showProgress ? ProgressBar(name: info.file) : nil)
                try cache.link(info.file, repo, commit: commit, etag: info.etag)
            }
        }
        try cache.writeRef(repo, commit: commit)
        let dir = cache.snapshotFolder(repo, commit: commit)
        return FetchResult(snapshot: dir, commit: commit, files: present, downloaded: planned.map(\.file), downloadedBytes: bytes)
    }
}

// MARK: - metadata and downloads

/// What a HEAD on `resolve/{revision}/{file}` said about a file.
struct HubFileInfo: Sendable {
    let file: String
    let commit: String
    /// sha256 (64 hex digits) for an LFS file, git blob sha1 (40) otherwise: the blob's name and its check.
    let etag: String
    let size: Int64?
    let downloadURL: URL
    /// Whether the download URL is on the hub itself (then it gets the token; a CDN does not).
    let sendToken: Bool
    var isSHA256: Bool { etag.utf8.count == 64 }
}

enum HeadResult: Sendable {
    case found(HubFileInfo)
    /// The repository and revision exist but not the file (`X-Error-Code: EntryNotFound`, or a bare 404);
    /// with the commit when the hub said it.
    case missing(commit: String?)
}

/// HTTP requests to one repository on the hub.
struct HubClient: Sendable {
    let settings: HubSettings
    let repo: HubRepo

    /// `{endpoint}/{id}/resolve/{revision}/{file}`, the revision percent-encoded whole (`refs%2Fpr%2F5`).
    func resolveURL(_ file: String, revision: String) throws -> URL {
        let rev = revision.addingPercentEncoding(withAllowedCharacters: .hubUnreserved) ?? revision
        let f = file.addingPercentEncoding(withAllowedCharacters: .hubPath) ?? file
        guard let u = URL(string: "\(settings.endpoint)/\(repo.id)/resolve/\(rev)/\(f)"), u.host != nil else {
            throw ZeroSegError("HF_ENDPOINT \(settings.endpoint) is not a URL")
        }
        return u
    }

    func headers(token: Bool) -> [String: String] {
        var h = ["User-Agent": "zeroseg/\(version)", "Accept-Encoding": "identity"]
        if token, let t = settings.token { h["Authorization"] = "Bearer \(t)" }
        return h
    }

    /// HEAD without following redirects to another host (an LFS file's 302 to its CDN carries the metadata).
    func head(_ file: String, revision: String) throws -> HeadResult {
        var url = try resolveURL(file, revision: revision)
        let endpointOrigin = Origin(url)
        for _ in 0..<5 {
            let sendToken = Origin(url) == endpointOrigin
            let reply: HTTPReply
            do {
                reply = try sendRetrying(url: url, method: "HEAD", headers: headers(token: sendToken))
            } catch let e as HTTPTransportError {
                throw ZeroSegError("cannot download \(repo): \(e.host) is unreachable (\(e.reason))")
            }
            if (300..<400).contains(reply.status), let loc = reply.header("location") {
                guard let target = URL(string: loc, relativeTo: url)?.absoluteURL else {
                    throw ZeroSegError("\(file) of \(repo): \(url.host ?? "") redirected to a bad URL")
                }
                // relative redirects stay on the hub (a renamed repository): follow; absolute ones go to a CDN: stop
                if !loc.contains("://") && !loc.hasPrefix("//") { url = target; continue }
                return .found(try info(file, reply, downloadURL: target, sendToken: Origin(target) == endpointOrigin))
            }
            if (200..<300).contains(reply.status) {
                return .found(try info(file, reply, downloadURL: url, sendToken: sendToken))
            }
            try throwHubError(reply, file: file)
            return .missing(commit: reply.header("x-repo-commit").flatMap { HubRepo.isCommitHash($0) ? $0 : nil })
        }
        throw ZeroSegError("\(file) of \(repo): too many redirects from \(settings.endpoint)")
    }

    /// A request without a body to keep (HEAD), tried again on a passing failure (`settings.retrySchedule`:
    /// a lost or stalled connection, 408, 429, 500, 502, 503, 504; `Retry-After` honoured). Returns the
    /// last answer, which may still be such a status once the tries are spent.
    func sendRetrying(url: URL, method: String, headers: [String: String]) throws -> HTTPReply {
        let schedule = settings.retrySchedule
        var failures = 0
        while true {
            var retryAfter: TimeInterval?
            do {
                let reply = try HTTP.send(url: url, method: method, headers: headers, followRedirects: false, timeout: settings.timeout)
                guard RetrySchedule.retryableStatuses.contains(reply.status) else { return reply }
                failures += 1
                if failures >= schedule.attempts { return reply }
                retryAfter = RetrySchedule.retryAfterSeconds(reply.header("retry-after"))
            } catch let e as HTTPTransportError where e.isPassing {
                failures += 1
                if failures >= schedule.attempts { throw e }
            }
            Thread.sleep(forTimeInterval: schedule.delay(afterFailure: failures, retryAfter: retryAfter))
        }
    }

    /// Throws for every error answer except a missing file (404 EntryNotFound or bare 404), which returns.
    func throwHubError(_ reply: HTTPReply, file: String) throws {
        let code = reply.header("x-error-code") ?? ""
        let status = reply.status
        let page = "\(settings.endpoint)/\(repo.id)"
        switch (status, code) {
        case (_, "EntryNotFound"), (404, ""): return
        case (_, "RevisionNotFound"):
            throw ZeroSegError("\(repo.id) has no revision \(repo.revision) on \(settings.endpoint) (\(status))")
        case (_, "GatedRepo"):
            throw ZeroSegError(settings.token == nil
                ? "\(repo.id) is gated: accept its conditions on \(page), then set HF_TOKEN (\(status))"
                : "\(repo.id) is gated and HF_TOKEN has no access: accept its conditions on \(page) (\(status))")
        case (401, _), (403, _):
            throw ZeroSegError(settings.token == nil
                ? "\(repo.id): \(settings.endpoint) refused access (\(status)): the repository is private or gated, or does not exist; set HF_TOKEN to a token that can read it"
                : "\(repo.id): \(settings.endpoint) refused HF_TOKEN (\(status)): the repository does not exist, or the token cannot read it")
        case (404, _):
            throw ZeroSegError("\(repo.id) was not found on \(settings.endpoint) (404)")
        default:
            let why = reply.header("x-error-message").map { ": \($0)" } ?? ""
            let tries = RetrySchedule.retryableStatuses.contains(status) ? " (\(settings.maxAttempts) tries)" : ""
            throw ZeroSegError("\(file) of \(repo): \(settings.endpoint) answered \(status)\(why)\(tries)")
        }
    }

    func info(_ file: String, _ reply: HTTPReply, downloadURL: URL, sendToken: Bool) throws -> HubFileInfo {
        guard let commit = reply.header("x-repo-commit"), HubRepo.isCommitHash(commit) else {
            throw ZeroSegError("\(settings.endpoint) sent no X-Repo-Commit for \(file): is HF_ENDPOINT a Hugging Face hub?")
        }
        let raw = reply.header("x-linked-etag") ?? reply.header("etag")
        guard let raw else { throw ZeroSegError("\(settings.endpoint) sent no ETag for \(file) of \(repo): it cannot be verified") }
        var etag = raw
        if etag.hasPrefix("W/") { etag.removeFirst(2) }
        etag = etag.trimmingCharacters(in: CharacterSet(charactersIn: "\"")).lowercased()
        guard (etag.utf8.count == 64 || etag.utf8.count == 40), etag.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else {
            throw ZeroSegError("\(file) of \(repo) cannot be verified: its ETag \(raw) is neither a sha256 nor a git sha1")
        }
        let isRedirect = (300..<400).contains(reply.status)
        let size = (reply.header("x-linked-size") ?? (isRedirect ? nil : reply.header("content-length"))).flatMap { Int64($0) }
        return HubFileInfo(file: file, commit: commit, etag: etag, size: size, downloadURL: downloadURL, sendToken: sendToken)
    }

    /// Downloads one file into `blobs/<etag>` (through `blobs/<etag>.incomplete`, resumed with Range), verifies it,
    /// and returns the bytes transferred. A file that fails verification is deleted.
    func download(_ info: HubFileInfo, cache: HubCache, progress: ProgressBar?) throws -> Int64 {
        let blob = cache.blobURL(repo, etag: info.etag)
        let fm = FileManager.default
        try fm.createDirectory(at: blob.deletingLastPathComponent(), withIntermediateDirectories: true)
        return try cache.withLock(repo, etag: info.etag) {
            if fm.fileExists(atPath: blob.path) { return 0 }
            let partial = URL(fileURLWithPath: blob.path + ".incomplete")
            let transferred = try get(info, into: partial, progress: progress)
            try verify(info, partial)
            if rename(partial.path, blob.path) != 0 {
                throw ZeroSegError("cannot move \(partial.path) to \(blob.path): \(String(cString: strerror(errno)))")
            }
            return transferred
        }
    }

    /// GETs the file into `partial`, appending to what is there with `Range: bytes=N-`; retries broken transfers.
    func get(_ info: HubFileInfo, into partial: URL, progress: ProgressBar?) throws -> Int64 {
        if !FileManager.default.fileExists(atPath: partial.path) {
            guard FileManager.default.createFile(atPath: partial.path, contents: nil) else {
                throw ZeroSegError("cannot create \(partial.path)")
            }
        }
        let fh = try FileHandle(forUpdating: partial)
        defer { try? fh.close() }
        let schedule = settings.retrySchedule
        var failures = 0, tries = 0
        var transferred: Int64 = 0
        let host = info.downloadURL.host ?? settings.endpoint
        while true {
            tries += 1
            var offset = Int64(try fh.seekToEnd())
            if let size = info.size, offset > size { try fh.truncate(atOffset: 0); offset = 0 }
            if let size = info.size, offset == size, size > 0 { break }  // complete from an earlier run
            progress?.begin(total: info.size, at: offset)
            var h = headers(token: info.sendToken)
            if offset > 0 { h["Range"] = "bytes=\(offset)-" }
            let sink = FileSink(handle: fh, offset: offset, progress: progress)
            var reply: HTTPReply?
            var broken: HTTPTransportError?
            var retryAfter: TimeInterval?
            do {
                reply = try HTTP.send(url: info.downloadURL, method: "GET", headers: h, followRedirects: true,
                                      timeout: settings.timeout, sink: sink)
            } catch let e as HTTPTransportError {
                broken = e
            }
            if let e = sink.error { progress?.end(); throw e }
            transferred += sink.written
            if let reply {
                switch reply.status {
                case 200, 206:
                    if let size = info.size, sink.position < size {
                        broken = HTTPTransportError(host: host, reason: "the answer stopped at \(sink.position) of \(size) bytes")
                    }
                case 416 where offset > 0:
                    try fh.truncate(atOffset: 0)  // the partial file does not fit the server's: start again
                    broken = HTTPTransportError(host: host, reason: "416 for a resumed download")
                case let status where RetrySchedule.retryableStatuses.contains(status):
                    broken = HTTPTransportError(host: host, reason: "answered \(status)")
                    retryAfter = RetrySchedule.retryAfterSeconds(reply.header("retry-after"))
                default:
                    progress?.end()
                    throw ZeroSegError("\(info.file) of \(repo): \(host) answered \(reply.status) to the download")
                }
            }
            guard let broken else { break }
            failures = sink.written > 0 ? 1 : failures + 1  // a try that brought bytes resets the count
            // ... but a server that sends a little and stalls each time gets 10 x maxAttempts tries in all
            if failures >= schedule.attempts || tries >= 10 * schedule.attempts {
                progress?.end()
                let kept = Int64((try? fh.seekToEnd()) ?? 0)
                throw ZeroSegError("downloading \(info.file) of \(repo) from \(host) failed (\(broken.reason)); "
                                   + "\(formatBytes(kept)) kept in \(partial.path): run again to resume")
            }
            Thread.sleep(forTimeInterval: schedule.delay(afterFailure: failures, retryAfter: retryAfter))
        }
        progress?.end()
        return transferred
    }

    /// sha256 (LFS) or git blob sha1 of `partial` against the ETag, and the size; deletes the file on a mismatch.
    func verify(_ info: HubFileInfo, _ partial: URL) throws {
        let size = (try? FileManager.default.attributesOfItem(atPath: partial.path)[.size] as? NSNumber)?.int64Value ?? -1
        func reject(_ why: String) throws -> Never {
            try? FileManager.default.removeItem(at: partial)
            throw ZeroSegError("\(info.file) of \(repo) failed verification (\(why)): deleted it, run again to download it again")
        }
        if let expected = info.size, size != expected { try reject("\(size) bytes, the hub says \(expected)") }
        let digest = try info.isSHA256 ? HubHash.sha256(file: partial) : HubHash.gitBlobSHA1(file: partial)
        if digest != info.etag {
            try reject("\(info.isSHA256 ? "sha256" : "git sha1") \(digest.prefix(12))…, the hub says \(info.etag.prefix(12))…")
        }
    }
}

/// Writes a download's body to the partial file: appends after a 206, starts over after a 200.
final class FileSink: HTTPBodySink, @unchecked Sendable {
    let handle: FileHandle
    let start: Int64
    let progress: ProgressBar?
    private(set) var position: Int64
    private(set) var written: Int64 = 0
    private(set) var error: Error?
    private var accepting: Bool?

    init(handle: FileHandle, offset: Int64, progress: ProgressBar?) {
        self.handle = handle; self.start = offset; self.position = offset; self.progress = progress
    }

    func receive(_ data: Data, response: HTTPURLResponse) -> Bool {
        if accepting == nil {
            switch response.statusCode {
            case 206:
                // Content-Range: bytes START-END/TOTAL must start where the file ends
                let cr = (response.value(forHTTPHeaderField: "Content-Range") ?? "")
                accepting = cr.hasPrefix("bytes \(start)-")
                if accepting == false {
                    error = ZeroSegError("\(response.url?.host ?? "the server") answered a resumed download with Content-Range \(cr)")
                    return false
                }
            case 200:
                do { try handle.truncate(atOffset: 0) } catch { self.error = error; return false }
                position = 0
                progress?.begin(total: nil, at: 0)
                accepting = true
            default:
                accepting = false
            }
        }
        guard accepting == true else { return true }
        do { try handle.write(contentsOf: data) } catch {
            self.error = ZeroSegError("cannot write the download: \(errorText(error))")
            return false
        }
        position += Int64(data.count)
        written += Int64(data.count)
        progress?.update(position)
        return true
    }
}

// MARK: - hashes

/// The checks huggingface_hub's ETags allow.
public enum HubHash {
    /// Lowercase hex sha256 of a file (an LFS file's ETag).
    public static func sha256(file: URL) throws -> String {
        var h = SHA256()
        try chunks(file) { h.update(bufferPointer: $0) }
        return hex(h.finalize())
    }

    /// Git's blob id of a file: sha1("blob <size>\0" + content) (a small file's ETag).
    public static func gitBlobSHA1(file: URL) throws -> String {
        let size = (try FileManager.default.attributesOfItem(atPath: file.path)[.size] as? NSNumber)?.intValue ?? 0
        var h = Insecure.SHA1()
        h.update(data: Data("blob \(size)\0".utf8))
        try chunks(file) { h.update(bufferPointer: $0) }
        return hex(h.finalize())
    }

    public static func sha256(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    public static func gitBlobSHA1(_ data: Data) -> String {
        var h = Insecure.SHA1()
        h.update(data: Data("blob \(data.count)\0".utf8))
        h.update(data: data)
        return hex(h.finalize())
    }

    static func hex<D: Sequence>(_ d: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in d { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    static func chunks(_ file: URL, _ body: (UnsafeRawBufferPointer) -> Void) throws {
        let fd = open(file.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ZeroSegError("cannot read \(file.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let n = 1 << 22
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 64)
        defer { buf.deallocate() }
        while true {
            let r = read(fd, buf.baseAddress, n)
            if r < 0 { if errno == EINTR { continue }; throw ZeroSegError("cannot read \(file.path): \(String(cString: strerror(errno)))") }
            if r == 0 { break }
            body(UnsafeRawBufferPointer(rebasing: buf[0..<r]))
        }
    }
}

// MARK: - HTTP over URLSession, synchronously

struct HTTPReply: Sendable {
    let status: Int
    let headers: [String: String]  // names lowercased
    let url: URL
    func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// The connection failed (no answer, DNS, refused, cut, timeout): `reason` is short, for messages.
struct HTTPTransportError: Error, Sendable {
    let host: String
    let reason: String
    /// A failure that may pass (the connection was lost or stalled), worth another try; not a host
    /// that cannot be found or refuses connections.
    var isPassing: Bool { reason == "connection lost" || reason == "no answer in time" }
}

protocol HTTPBodySink: AnyObject, Sendable {
    /// Returns false to stop the transfer.
    func receive(_ data: Data, response: HTTPURLResponse) -> Bool
}

/// (scheme, host, port) of a URL: the token goes only where the endpoint's origin is.
struct Origin: Equatable {
    let scheme: String, host: String, port: Int
    init(_ u: URL) {
        scheme = (u.scheme ?? "").lowercased()
        host = (u.host ?? "").lowercased()
        port = u.port ?? (scheme == "https" ? 443 : scheme == "http" ? 80 : 0)
    }
}

enum HTTP {
    static func send(url: URL, method: String, headers: [String: String], followRedirects: Bool,
                     timeout: TimeInterval, sink: HTTPBodySink? = nil) throws -> HTTPReply {
        var req = URLRequest(url: url)
        req.httpMethod = method
        req.timeoutInterval = timeout
        for (k, v) in headers { req.setValue(v, forHTTPHeaderField: k) }
        let config = URLSessionConfiguration.ephemeral
        config.timeoutIntervalForRequest = timeout
        config.timeoutIntervalForResource = 7 * 24 * 3600
        config.requestCachePolicy = .reloadIgnoringLocalCacheData
        config.urlCache = nil
        config.httpCookieStorage = nil
        let transfer = Transfer(followRedirects: followRedirects, sink: sink)
        let session = URLSession(configuration: config, delegate: transfer, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        let task = session.dataTask(with: req)
        task.resume()
        transfer.done.wait()
        let response = transfer.response ?? (task.response as? HTTPURLResponse)
        if let error = transfer.error {
            // a sink that stopped the transfer on purpose ends it with a cancel: report the answer
            if transfer.stopped, let response { return reply(response, url) }
            throw HTTPTransportError(host: url.host ?? url.absoluteString, reason: describe(error))
        }
        guard let response else { throw HTTPTransportError(host: url.host ?? "", reason: "no answer") }
        return reply(response, url)
    }

    static func reply(_ r: HTTPURLResponse, _ url: URL) -> HTTPReply {
        var h: [String: String] = [:]
        for (k, v) in r.allHeaderFields { if let k = k as? String, let v = v as? String { h[k.lowercased()] = v } }
        return HTTPReply(status: r.statusCode, headers: h, url: r.url ?? url)
    }

    /// A short, one-line reason for a transport error ("connection lost", "host not found", ...). On Linux,
    /// FoundationNetworking maps only some of libcurl's errors to URLError codes; the others arrive as
    /// NSURLErrorUnknown (-1) carrying libcurl's message ("transfer closed with 176544 bytes remaining to read"),
    /// which is classified here by its wording. Never the error's userInfo dictionary.
    static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if ns.domain == NSURLErrorDomain {
            switch ns.code {
            case NSURLErrorCannotFindHost, NSURLErrorDNSLookupFailed: return "host not found"
            case NSURLErrorCannotConnectToHost: return "connection refused"
            case NSURLErrorTimedOut: return "no answer in time"
            case NSURLErrorNotConnectedToInternet: return "no network"
            case NSURLErrorNetworkConnectionLost: return "connection lost"
            case NSURLErrorSecureConnectionFailed, NSURLErrorServerCertificateUntrusted, NSURLErrorServerCertificateHasBadDate,
                 NSURLErrorServerCertificateNotYetValid, NSURLErrorServerCertificateHasUnknownRoot,
                 NSURLErrorClientCertificateRejected, NSURLErrorClientCertificateRequired: return "TLS failed"
            case NSURLErrorBadServerResponse, NSURLErrorCannotParseResponse: return "bad answer"
            case NSURLErrorHTTPTooManyRedirects: return "too many redirects"
            case NSURLErrorBadURL, NSURLErrorUnsupportedURL: return "unsupported URL"
            case NSURLErrorCancelled: return "cancelled"
            default: break
            }
        }
        // libcurl's own message, on the error or the error under it
        var messages: [String] = []
        var e: NSError? = ns
        for _ in 0..<4 {
            guard let cur = e else { break }
            if let m = cur.userInfo[NSLocalizedDescriptionKey] as? String { messages.append(m) }
            e = cur.userInfo[NSUnderlyingErrorKey] as? NSError
        }
        let text = messages.joined(separator: " | ").lowercased()
        let rules: [(keys: [String], reason: String)] = [
            (["transfer closed", "connection reset", "connection died", "recv failure", "send failure",
              "failure when receiving", "failed sending data", "empty reply", "broken pipe", "unexpected eof",
              "partial file"], "connection lost"),
            (["timed out", "timeout"], "no answer in time"),
            (["could not resolve", "couldn't resolve", "name or service not known"], "host not found"),
            (["connection refused", "failed to connect", "couldn't connect", "could not connect"], "connection refused"),
            (["ssl", "tls", "certificate"], "TLS failed"),
        ]
        for r in rules where r.keys.contains(where: { text.contains($0) }) { return r.reason }
        // Something else: its message, shortened to one line.
        let first = messages.first { !$0.isEmpty && $0 != "(null)" }
        return shortLine("network error \(ns.code)" + (first.map { ": \($0)" } ?? ""))
    }

    /// `s` as one line of at most `limit` characters (control characters become spaces).
    static func shortLine(_ s: String, limit: Int = 100) -> String {
        var t = String(s.unicodeScalars.map { $0.properties.generalCategory == .control ? " " : Character($0) })
        while t.contains("  ") { t = t.replacingOccurrences(of: "  ", with: " ") }
        t = t.trimmingCharacters(in: .whitespaces)
        return t.count > limit ? String(t.prefix(limit - 1)) + "…" : t
    }

    final class Transfer: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        let followRedirects: Bool
        let sink: HTTPBodySink?
        let done = DispatchSemaphore(value: 0)
        var response: HTTPURLResponse?
        var error: Error?
        var stopped = false

        init(followRedirects: Bool, sink: HTTPBodySink?) { self.followRedirects = followRedirects; self.sink = sink }

        func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                        newRequest request: URLRequest, completionHandler: @escaping @Sendable (URLRequest?) -> Void) {
            if followRedirects { completionHandler(request) } else { self.response = response; completionHandler(nil) }
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                        completionHandler: @escaping @Sendable (URLSession.ResponseDisposition) -> Void) {
            self.response = response as? HTTPURLResponse
            completionHandler(.allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            guard let sink, !stopped, let r = response ?? (dataTask.response as? HTTPURLResponse) else { return }
            if !sink.receive(data, response: r) { stopped = true; dataTask.cancel() }
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
            self.error = error
            if response == nil { response = task.response as? HTTPURLResponse }
            done.signal()
        }
    }
}

extension CharacterSet {
    static let hubUnreserved = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
    static let hubPath = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")
}

// MARK: - progress

func formatBytes(_ n: Int64) -> String {
    let d = Double(n)
    if d >= 1e9 { return String(format: "%.1f GB", d / 1e9) }
    if d >= 1e6 { return String(format: "%.1f MB", d / 1e6) }
    if d >= 1e3 { return String(format: "%.1f kB", d / 1e3) }
    return "\(n) B"
}

/// One line on stderr, redrawn at most 10 times a second: `model.safetensors  [#####     ]  45%  270.1 MB / 598.6 MB  35.2 MB/s`.
final class ProgressBar: @unchecked Sendable {
    let name: String
    private var total: Int64?
    private var startBytes: Int64 = 0
    private var startTime = Date()
    private var last = Date.distantPast
    private var current: Int64 = 0
    private var drawn = false

    init(name: String) { self.name = name }

    func begin(total: Int64?, at bytes: Int64) {
        if total != nil { self.total = total }
        startBytes = bytes; current = bytes; startTime = Date(); last = .distantPast
        draw(force: true)
    }

    func update(_ bytes: Int64) { current = bytes; draw(force: false) }

    func end() {
        guard drawn else { return }
        draw(force: true)
        FileHandle.standardError.write(Data("\n".utf8))
        drawn = false
    }

    private func draw(force: Bool) {
        let now = Date()
        guard force || now.timeIntervalSince(last) >= 0.1 else { return }
        last = now
        let width = 24
        var line = name
        if let total, total > 0 {
            let f = min(1, Double(current) / Double(total))
            let filled = Int(f * Double(width))
            line += "  [" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled) + "]"
            line += String(format: " %3d%%  ", Int(f * 100)) + formatBytes(current) + " / " + formatBytes(total)
        } else {
            line += "  " + formatBytes(current)
        }
        let dt = now.timeIntervalSince(startTime)
        if dt > 0.5 { line += "  " + formatBytes(Int64(Double(current - startBytes) / dt)) + "/s" }
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        drawn = true
    }
}
