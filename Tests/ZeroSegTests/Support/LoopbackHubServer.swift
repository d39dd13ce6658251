import Foundation
import ZeroSeg
#if canImport(Glibc)
import Glibc
#endif

/// A stand-in for the Hugging Face hub on 127.0.0.1 (HTTP/1.1, one thread per connection, `Connection: close`),
/// serving repositories made by the tests in the hub's URL layout:
///
/// - `HEAD|GET /ORG/NAME/resolve/REV/FILE` — REV a branch or the commit (percent-encoded, e.g. `refs%2Fpr%2F5`).
///   Small files: 200 with `ETag: "<git blob sha1>"`, `X-Repo-Commit`. LFS files: 302 to `/cdn/<sha256>` (an absolute
///   URL, on `cdnServer` when set) with `X-Linked-Etag: "<sha256>"`, `X-Linked-Size`, `X-Repo-Commit`.
///   Unknown repository: 401 (or 404 when `unknownRepoStatus` is 404) `X-Error-Code: RepoNotFound`; private without
///   the token: 401 RepoNotFound; gated: 401/403 GatedRepo; unknown revision: 404 RevisionNotFound; missing file:
///   404 EntryNotFound with `X-Repo-Commit`.
/// - `GET /cdn/<sha256>` — the LFS file's bytes. Every GET of file bytes honours `Range: bytes=N-[M]` (206, or 416).
///
/// Faults, per file name and method (GET of the bytes, on /resolve/ or /cdn/; or the HEAD on /resolve/), used once
/// each in order: cut the connection after N body bytes, serve corrupted bytes, answer a status (with `Retry-After`),
/// send the body slowly (chunks with pauses), or stall (send N bytes, wait, close). Every request is recorded
/// (method, path, headers, time of arrival).
final class LoopbackHubServer: @unchecked Sendable {
    struct Request: Sendable, CustomStringConvertible {
        let method: String
        let path: String
        let headers: [String: String]  // names lowercased
        let time: Date
        func header(_ name: String) -> String? { headers[name.lowercased()] }
        var description: String { "\(method) \(path)" + (header("range").map { " [Range: \($0)]" } ?? "") }
    }

    enum Fault: Sendable {
        /// The body stops after N bytes (the connection is closed).
        case cutAfter(Int)
        /// One byte in the middle of the body (of what this answer sends) is flipped.
        case corrupt
        /// The answer is this status, with `Retry-After` when given, and no body.
        case status(Int, retryAfter: String? = nil)
        /// The body in chunks of `chunk` bytes with `pause` seconds between them.
        case slow(chunk: Int, pause: TimeInterval)
        /// `after` bytes of the body, then nothing for `seconds`, then the connection is closed.
        case stall(after: Int, seconds: TimeInterval)
    }

    struct Repo: Sendable {
        var commit: String
        var branches: [String: String]
        var files: [String: Data]
        var lfs: Set<String>
        var token: String?
        var gated = false
    }

    let port: UInt16
    var endpoint: String { "http://127.0.0.1:\(port)" }
    /// Where LFS redirects point (another server: a CDN on another origin); self when nil.
    var cdnServer: LoopbackHubServer? {
        get { lock.withLock { _cdn } }
        set { lock.withLock { _cdn = newValue } }
    }
    var unknownRepoStatus: Int {
        get { lock.withLock { _unknownStatus } }
        set { lock.withLock { _unknownStatus = newValue } }
    }

    private let listenFD: Int32
    private let lock = NSLock()
    private var repos: [String: Repo] = [:]
    private var blobs: [String: (file: String, data: Data)] = [:]  // sha256 -> LFS file
    private var faults: [String: [Fault]] = [:]
    private var log: [Request] = []
    private var _cdn: LoopbackHubServer?
    private var _unknownStatus = 401

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ZeroSegError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw ZeroSegError("bind/listen on 127.0.0.1: \(String(cString: strerror(errno)))")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        listenFD = fd
        port = UInt16(bigEndian: addr.sin_port)
        let t = Thread { [self] in acceptLoop() }
        t.start()
    }

    deinit { stop() }

    private var stopped = false

    func stop() {
        let first = lock.withLock { () -> Bool in defer { stopped = true }; return !stopped }
        guard first else { return }
        // Only shut the socket down: that wakes the accept loop, which closes it. Closing it here
        // would free its number while the loop may still call accept() on it, and a server
        // started next (another test) could get that number: the old loop would then take its
        // connections and answer 401 for repositories it does not know.
        shutdown(listenFD, Int32(SHUT_RDWR))
    }

    // MARK: set-up by the tests

    /// Adds a repository; its files are LFS files when named in `lfs`.
    @discardableResult
    func addRepo(_ id: String, files: [String: Data], lfs: Set<String> = [], commit: String? = nil,
                 branches: [String: String]? = nil, token: String? = nil, gated: Bool = false) -> Repo {
        let c = commit ?? HubHash.gitBlobSHA1(Data((id + "\(files.count)").utf8))
        let repo = Repo(commit: c, branches: branches ?? ["main": c], files: files, lfs: lfs, token: token, gated: gated)
        lock.withLock {
            repos[id] = repo
            for f in lfs { if let d = files[f] { blobs[HubHash.sha256(d)] = (f, d) } }
        }
        cdnServer?.addBlobs(of: repo)
        return repo
    }

    func addBlobs(of repo: Repo) {
        lock.withLock { for f in repo.lfs { if let d = repo.files[f] { blobs[HubHash.sha256(d)] = (f, d) } } }
    }

    /// The next GET of `file`'s bytes (on /resolve/ or /cdn/), or with `method` "HEAD" the next HEAD of it on
    /// /resolve/ (only `.status` and `.stall` apply), gets `fault`; several queue up.
    func inject(_ fault: Fault, file: String, method: String = "GET") {
        lock.withLock { faults[method == "GET" ? file : method + " " + file, default: []].append(fault) }
    }

    private func takeFault(_ key: String) -> Fault? {
        lock.withLock { faults[key]?.isEmpty == false ? faults[key]!.removeFirst() : nil }
    }

    var requests: [Request] { lock.withLock { log } }
    func resetLog() { lock.withLock { log.removeAll() } }

    // MARK: serving

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR && !lock.withLock({ stopped }) { continue }
                close(listenFD)
                return
            }
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let t = Thread { [self] in serve(fd) }
            t.start()
        }
    }

    private func serve(_ fd: Int32) {
        defer { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
        var buf = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        let end: Int
        while true {
            if let r = find(buf, [13, 10, 13, 10]) { end = r; break }
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 || buf.count > 65536 { return }
            buf.append(contentsOf: chunk[0..<n])
        }
        let head = String(decoding: buf[0..<end], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let parts = lines.removeFirst().split(separator: " ")
        guard parts.count >= 2 else { return }
        var headers: [String: String] = [:]
        for l in lines {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
        let req = Request(method: String(parts[0]), path: String(parts[1]), headers: headers, time: Date())
        lock.withLock { log.append(req) }
        respond(fd, req)
    }

    private func find(_ a: [UInt8], _ p: [UInt8]) -> Int? {
        guard a.count >= p.count else { return nil }
        for i in 0...(a.count - p.count) where a[i] == p[0] && Array(a[i..<(i + p.count)]) == p { return i }
        return nil
    }

    private func respond(_ fd: Int32, _ req: Request) {
        let path = req.path.split(separator: "?").first.map(String.init) ?? req.path
        if path.hasPrefix("/cdn/") {
            let sha = String(path.dropFirst(5))
            guard let blob = lock.withLock({ blobs[sha] }) else { return send(fd, req, 404, [:], Data()) }
            return sendFile(fd, req, file: blob.file, data: blob.data, headers: ["ETag": "\"\(sha)\""])
        }
        // /ORG/NAME/resolve/REV/FILE
        let comps = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        guard comps.count >= 5, comps[2] == "resolve" else { return send(fd, req, 404, [:], Data()) }
        let id = comps[0] + "/" + comps[1]
        let rev = comps[3].removingPercentEncoding ?? comps[3]
        let file = comps[4...].joined(separator: "/").removingPercentEncoding ?? ""
        if req.method == "HEAD", let fault = takeFault("HEAD " + file) {
            switch fault {
            case .status(let s, let retryAfter): return send(fd, req, s, retryAfter.map { ["Retry-After": $0] } ?? [:], Data())
            case .stall(_, let seconds): Thread.sleep(forTimeInterval: seconds); return
            default: break
            }
        }
        let (repoOrNil, unknownStatus, cdn) = lock.withLock { (repos[id], _unknownStatus, _cdn) }
        guard let repo = repoOrNil else {
            return send(fd, req, unknownStatus, ["X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"], Data())
        }
        let auth = req.header("authorization")
        if let token = repo.token, auth != "Bearer \(token)" {
            if repo.gated {
                return send(fd, req, auth == nil ? 401 : 403, ["X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model \(id) is restricted."], Data())
            }
            return send(fd, req, 401, ["X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"], Data())
        }
        guard let commit = rev == repo.commit ? repo.commit : repo.branches[rev] else {
            return send(fd, req, 404, ["X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: \(rev)"], Data())
        }
        guard let data = repo.files[file] else {
            return send(fd, req, 404, ["X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit], Data())
        }
        if repo.lfs.contains(file) {
            let sha = HubHash.sha256(data)
            let base = cdn?.endpoint ?? endpoint
            return send(fd, req, 302, [
                "Location": "\(base)/cdn/\(sha)", "X-Linked-Etag": "\"\(sha)\"", "X-Linked-Size": "\(data.count)",
                "X-Repo-Commit": commit, "ETag": "\"\(HubHash.gitBlobSHA1(Data("pointer \(sha)".utf8)))\"",
            ], Data())
        }
        sendFile(fd, req, file: file, data: data, headers: ["ETag": "\"\(HubHash.gitBlobSHA1(data))\"", "X-Repo-Commit": commit])
    }

    /// Sends a file's bytes, honouring Range and the faults queued for it.
    private func sendFile(_ fd: Int32, _ req: Request, file: String, data: Data, headers: [String: String]) {
        var h = headers
        h["Accept-Ranges"] = "bytes"
        let fault: Fault? = req.method == "GET" ? takeFault(file) : nil
        if case .status(let s, let retryAfter)? = fault { return send(fd, req, s, retryAfter.map { ["Retry-After": $0] } ?? [:], Data()) }
        var body = data
        if case .corrupt? = fault, !body.isEmpty { body[body.count / 2] ^= 0xFF }
        var status = 200
        if let range = req.header("range"), range.hasPrefix("bytes=") {
            let spec = range.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false)
            let start = Int(spec.first ?? "") ?? 0
            let last = spec.count > 1 ? Int(spec[1]) ?? (data.count - 1) : data.count - 1
            guard start < data.count else {
                return send(fd, req, 416, ["Content-Range": "bytes */\(data.count)"], Data())
            }
            let stop = min(last, data.count - 1)
            body = body.subdata(in: start..<(stop + 1))
            h["Content-Range"] = "bytes \(start)-\(stop)/\(data.count)"
            status = 206
        }
        switch fault {
        case .cutAfter(let n)?: send(fd, req, status, h, body, cutAfter: n)
        case .slow(let chunk, let pause)?: send(fd, req, status, h, body, chunk: chunk, pause: pause)
        case .stall(let n, let seconds)?: send(fd, req, status, h, body, cutAfter: n, stall: seconds)
        default: send(fd, req, status, h, body)
        }
    }

    /// Sends an answer; `cutAfter`: only that many body bytes (after `stall` seconds of silence, the connection is
    /// closed); `chunk` and `pause`: the body in pieces with pauses between them.
    private func send(_ fd: Int32, _ req: Request, _ status: Int, _ headers: [String: String], _ body: Data, cutAfter: Int? = nil,
                      stall: TimeInterval = 0, chunk: Int? = nil, pause: TimeInterval = 0) {
        let reason = [200: "OK", 206: "Partial Content", 302: "Found", 401: "Unauthorized", 403: "Forbidden",
                      404: "Not Found", 416: "Range Not Satisfiable", 429: "Too Many Requests", 500: "Internal Server Error",
                      503: "Service Unavailable"][status] ?? "Status"
        var text = "HTTP/1.1 \(status) \(reason)\r\n"
        var h = headers
        h["Content-Length"] = "\(body.count)"
        h["Connection"] = "close"
        for (k, v) in h.sorted(by: { $0.key < $1.key }) { text += "\(k): \(v)\r\n" }
        text += "\r\n"
        let payload = req.method == "HEAD" ? Data() : (cutAfter.map { body.prefix($0) } ?? body)
        guard sendAll(fd, Data(text.utf8)) else { return }
        if let chunk, chunk > 0 {
            var start = 0
            while start < payload.count {
                let end = min(payload.count, start + chunk)
                guard sendAll(fd, payload.subdata(in: (payload.startIndex + start)..<(payload.startIndex + end))) else { return }
                start = end
                if start < payload.count { Thread.sleep(forTimeInterval: pause) }
            }
        } else {
            guard sendAll(fd, payload) else { return }
        }
        if stall > 0 { Thread.sleep(forTimeInterval: stall) }
    }

    private func sendAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { (p: UnsafeRawBufferPointer) -> Bool in
            var off = 0
            while off < p.count {
                let n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                if n <= 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
    }
}
