import Foundation
import Testing
import ZeroSeg

/// `zeroseg serve` as a process: SIGTERM drains (in-flight answered, new requests 503, exit 0),
/// nothing but the caches is written, and the command's errors. Loopback only, every wait bounded.
@Suite(.serialized) struct ServeCommandTests {
    static var tiny: String { SegmentationGoldenTests.tinyDir.path }

    /// Waits (at most `seconds`) for the "listening on http://127.0.0.1:PORT" line.
    static func port(from stderr: URL, seconds: Double = 120) throws -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let text = (try? String(contentsOf: stderr, encoding: .utf8)) ?? ""
            if let r = text.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression),
               let p = Int(text[r].split(separator: ":").last ?? "") { return p }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ZeroSegError("the server did not say where it listens within \(seconds) s: \((try? String(contentsOf: stderr, encoding: .utf8)) ?? "")")
    }

    /// Polls `condition` every 20 ms for at most `seconds`.
    static func eventually(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline { if condition() { return true }; Thread.sleep(forTimeInterval: 0.02) }
        return condition()
    }

    @Test func sigtermDrainsAndWritesNothing() throws {
        let work = temporaryDirectory("serve-cwd"), cache = temporaryDirectory("serve-cache")
        let errFile = temporaryDirectory("serve-err").appendingPathComponent("stderr.txt")
        let child = try SpawnedCLI(["serve", "--port", "0", "--model", Self.tiny, "--workers", "1", "--queue", "4", "--threads", "2"],
                                   stderr: errFile.path, directory: work.path, environment: ["XDG_CACHE_HOME": cache.path, "ZEROSEG_MODEL": ""])
        let port = try Self.port(from: errFile)
        #expect(try LoopbackHTTP.request(port: port, "GET", "/healthz").status == 200)
        // A request that computes for a while, in flight when SIGTERM comes.
        let image = try Data(contentsOf: repoRoot.appendingPathComponent("examples/chelsea.jpg"))
        let (body, type) = LoopbackHTTP.multipart(["classes": "cat,grass|lawn,wall", "short-side": "1400"], file: ("image", "chelsea.jpg", image))
        let slow = LoopbackHTTP.Background { try LoopbackHTTP.request(port: port, "POST", "/v1/segment", headers: ["Content-Type": type], body: body) }
        #expect(Self.eventually(60) {
            ((try? LoopbackHTTP.request(port: port, "GET", "/metrics").text) ?? "").contains("zeroseg_workers_busy 1")
        }, "the slow request never started computing")
        #expect(child.signal(SIGTERM))
        #expect(Self.eventually(10) { (try? LoopbackHTTP.request(port: port, "GET", "/healthz").status) == 503 })
        let refused = try LoopbackHTTP.request(port: port, "POST", "/v1/embed", headers: ["Content-Type": "application/json"], body: Data("{\"text\":[\"a\"]}".utf8))
        #expect(refused.status == 503 && refused.text.contains("shutting down") && refused.headers["retry-after"] != nil, "\(refused.status) \(refused.text)")
        let answered = try slow.value(timeout: 120)
        #expect(answered.status == 200 && answered.text.contains("\"command\":\"segment\""), "\(answered.status) \(answered.text.prefix(200))")
        #expect(child.wait() == .exited(0))
        let err = try String(contentsOf: errFile, encoding: .utf8)
        #expect(err.hasSuffix("stopped\n"), "\(err)")
        // Nothing from the requests on disk: the working directory is empty, the cache holds only
        // class embeddings.
        #expect(try FileManager.default.contentsOfDirectory(atPath: work.path).isEmpty)
        let cached = FileManager.default.enumerator(atPath: cache.path)?.compactMap { $0 as? String } ?? []
        let files = cached.filter { !$0.hasSuffix("/") && (try? FileManager.default.attributesOfItem(atPath: cache.appendingPathComponent($0).path)[.type] as? FileAttributeType) == .typeRegular }
        #expect(!files.isEmpty && files.allSatisfy { $0.hasPrefix("zeroseg/text/") && $0.hasSuffix(".f32") }, "\(files)")
    }

    /// A second server on the same port: a one-line error and exit 5, not a crash.
    @Test func portInUse() throws {
        let errFile = temporaryDirectory("serve-err").appendingPathComponent("a.txt")
        let first = try SpawnedCLI(["serve", "--port", "0", "--model", Self.tiny], stderr: errFile.path, environment: ["ZEROSEG_MODEL": ""])
        let port = try Self.port(from: errFile)
        let second = try runCLI(["serve", "--port", "\(port)", "--model", Self.tiny])
        #expect(second.status == 5)
        #expect(second.stderr.contains("error: cannot serve on 127.0.0.1:\(port)"), "\(second.stderr)")
        #expect(first.signal(SIGTERM))
        #expect(first.wait() == .exited(0))
    }

    /// Bad flags are usage errors naming the flag; a public bind warns before anything else
    /// (here the index is missing, so nothing is ever bound).
    @Test func flags() throws {
        let r = try runCLI(["serve", "--max-upload-bytes", "10", "--model", Self.tiny])
        #expect(r.status == 2 && r.stderr == "error: --max-upload-bytes: the upload limit must be between 1 KiB and 1 GiB\n", "\(r.stderr)")
        let q = try runCLI(["serve", "--queue", "-1", "--model", Self.tiny])
        #expect(q.status == 2 && q.stderr.contains("--queue"), "\(q.stderr)")
        let open = try runCLI(["serve", "--host", "0.0.0.0", "--index", "/nonexistent/index", "--model", Self.tiny])
        #expect(open.status != 0)
        #expect(open.stderr.hasPrefix("warning: binding 0.0.0.0: the server is reachable from the network with no --token\n"), "\(open.stderr)")
    }
}

/// A minimal HTTP/1.1 client over a loopback socket (Connection: close, bounded by timeouts),
/// so the tests need no HTTP library of their own.
enum LoopbackHTTP {
    struct Answer {
        var status: Int
        var headers: [String: String]  // lower-cased names
        var body: Data
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    static func request(port: Int, _ method: String, _ path: String, headers: [String: String] = [:], body: Data = Data(),
                        timeout: Int = 120) throws -> Answer {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ZeroSegError("socket: \(errno)") }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw ZeroSegError("connect to 127.0.0.1:\(port): errno \(errno)") }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\nContent-Length: \(body.count)\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        let out = Data((head + "\r\n").utf8) + body
        try out.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                guard n > 0 else { throw ZeroSegError("send: errno \(errno)") }
                sent += n
            }
        }
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 { break }
            guard n > 0 else { throw ZeroSegError("recv: errno \(errno)") }
            data.append(contentsOf: buf[0..<n])
        }
        guard let split = data.range(of: Data("\r\n\r\n".utf8)) else { throw ZeroSegError("no HTTP head in \(data.count) bytes") }
        let lines = String(decoding: data[..<split.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        guard let status = lines.first?.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { throw ZeroSegError("bad status line") }
        var h: [String: String] = [:]
        for l in lines.dropFirst() { if let c = l.firstIndex(of: ":") { h[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces) } }
        var payload = Data(data[split.upperBound...])
        if h["transfer-encoding"]?.lowercased() == "chunked" { payload = try dechunk(payload) }
        return Answer(status: status, headers: h, body: payload)
    }

    static func dechunk(_ d: Data) throws -> Data {
        var out = Data(), i = d.startIndex
        while let eol = d[i...].range(of: Data("\r\n".utf8)) {
            guard let size = Int(String(decoding: d[i..<eol.lowerBound], as: UTF8.self).split(separator: ";")[0], radix: 16) else { throw ZeroSegError("bad chunk") }
            if size == 0 { break }
            out.append(d[eol.upperBound..<(eol.upperBound + size)])
            i = eol.upperBound + size + 2
        }
        return out
    }

    static func multipart(_ fields: [String: String], file: (name: String, filename: String, bytes: Data)) -> (Data, String) {
        let boundary = "zs-\(UUID().uuidString)"
        var d = Data()
        for (k, v) in fields.sorted(by: { $0.key < $1.key }) { d += Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(k)\"\r\n\r\n\(v)\r\n".utf8) }
        d += Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(file.name)\"; filename=\"\(file.filename)\"\r\nContent-Type: image/jpeg\r\n\r\n".utf8)
        d += file.bytes + Data("\r\n--\(boundary)--\r\n".utf8)
        return (d, "multipart/form-data; boundary=\(boundary)")
    }

    /// A request on its own thread.
    final class Background: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<Answer, any Error>?
        init(_ body: @escaping @Sendable () throws -> Answer) {
            Thread { [self] in result = Result { try body() }; done.signal() }.start()
        }
        func value(timeout: Double) throws -> Answer {
            guard done.wait(timeout: .now() + timeout) == .success, let result else { throw ZeroSegError("no answer within \(timeout) s") }
            return try result.get()
        }
    }
}
