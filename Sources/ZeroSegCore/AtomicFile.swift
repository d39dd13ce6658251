import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Atomic files

/// Thrown inside a `writeFileAtomically` body: the reason, without the path (added outside), and
/// the system error (`errno`) when there is one.
package struct AtomicWriteFailure: Error {
    package init(reason: String, code: Int32? = nil) { self.reason = reason; self.code = code }
    package var reason: String
    package var code: Int32?

    /// A failure whose reason is a system error's text exactly (`strerror`, as C code that wrote
    /// with write(2) reports it): the error's code is recovered from the text, so that a full disk
    /// is known as ENOSPC.
    package init(systemMessage text: String) {
        reason = text
        code = [ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EIO, EFBIG, EBADF].first { String(cString: strerror($0)) == text }
    }
}

/// The temporary files of atomic writes in progress, so that a process that must exit at once
/// (a second SIGINT) can remove them first (`AtomicWrites.abandonAll`).
public enum AtomicWrites {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var inProgress = Set<String>()

    static func begin(_ tmp: String) { lock.withLock { _ = inProgress.insert(tmp) } }
    static func end(_ tmp: String) { lock.withLock { _ = inProgress.remove(tmp) } }

    /// Removes the temporary file of every atomic write in progress (their targets stay as they
    /// were: the writes cannot complete without them). For a process about to exit; returns how
    /// many were removed.
    @discardableResult
    public static func abandonAll() -> Int {
        lock.withLock {
            for t in inProgress { unlink(t) }
            defer { inProgress.removeAll() }
            return inProgress.count
        }
    }

    /// The temporary files in progress (for tests).
    package static var pending: [String] { lock.withLock { Array(inProgress) } }

    nonisolated(unsafe) private static var injected: [String: Int32] = [:]

    /// Test-only (where a small file system cannot be mounted): every atomic write of a file under
    /// the folder `prefix` fails with the system error `code` (e.g. ENOSPC) once its temporary file
    /// exists, as a full disk would fail its first write(2); nil removes the fault.
    package static func injectFailure(_ code: Int32?, under prefix: String) {
        lock.withLock { injected[prefix.hasSuffix("/") ? prefix : prefix + "/"] = code }
    }

    static func injectedFailure(for path: String) -> Int32? {
        lock.withLock { injected.isEmpty ? nil : injected.first { path.hasPrefix($0.key) }?.value }
    }
}

private func errnoText(_ code: Int32) -> String { String(cString: strerror(code)) }

/// Writes `url` atomically: `body` writes to a new temporary file (".NAME.zeroseg-tmp-PID-RAND",
/// same directory, so the rename cannot cross file systems), which is flushed to disk and
/// renamed over `url` only when everything succeeded. On any error the temporary file is
/// removed, `url` is untouched, and a one-line `ZeroSegError("cannot write WHAT PATH: why")`
/// of kind `.io(file: PATH)` is thrown. New files get the usual permissions (0666 less the umask).
public func writeFileAtomically(_ url: URL, what: String, _ body: (Int32) throws -> Void) throws {
    let path = url.path
    let dir = url.deletingLastPathComponent().path
    let name = url.lastPathComponent
    func fail(_ why: String, code: Int32? = nil) -> ZeroSegError {
        .io("cannot write \(what) \(path): \(why)", file: path, systemCode: code)
    }
    guard !name.isEmpty, name != "/", name != ".", name != ".." else { throw fail("not a file name") }

    var isDir: ObjCBool = false
    if !FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) {
        throw fail("directory \(dir) does not exist")
    } else if !isDir.boolValue {
        throw fail("\(dir) is not a directory")
    }

    var fd: Int32 = -1
    var tmp = ""
    var code: Int32 = 0
    for _ in 0..<64 {
        tmp = dir + "/." + String(name.prefix(40)) + ".zeroseg-tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        code = errno
        if fd >= 0 || code != EEXIST { break }
    }
    guard fd >= 0 else { throw fail(errnoText(code), code: code) }
    AtomicWrites.begin(tmp)

    var ok = false
    defer {
        if fd >= 0 { close(fd) }
        if !ok { unlink(tmp) }
        AtomicWrites.end(tmp)
    }
    do {
        if let code = AtomicWrites.injectedFailure(for: path) { throw AtomicWriteFailure(reason: errnoText(code), code: code) }
        try body(fd)
    } catch let e as AtomicWriteFailure {
        throw fail(e.reason, code: e.code)
    } catch let e as ZeroSegError {
        throw e
    } catch {
        throw fail("\(error)")
    }
    func check(_ rc: Int32) throws { if rc != 0 { let c = errno; throw fail(errnoText(c), code: c) } }
    try check(fsync(fd))
    let closed = close(fd)
    fd = -1
    try check(closed)
    try check(rename(tmp, path))
    ok = true
}

/// Writes `data` to `url` atomically (see `writeFileAtomically`): complete or not at all. On
/// failure a one-line `ZeroSegError("cannot write WHAT PATH: why")` is thrown and nothing is left.
public func writeDataAtomically(_ data: Data, to url: URL, what: String = "file") throws {
    try writeFileAtomically(url, what: what) { fd in
        try data.withUnsafeBytes { try writeAll(fd, $0) }
    }
}

/// write(2) of all of `bytes`, retrying short writes and EINTR.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
    guard var p = bytes.baseAddress else { return }
    var left = bytes.count
    while left > 0 {
        let n = write(fd, p, left)
        if n < 0 {
            let code = errno
            if code == EINTR { continue }
            throw AtomicWriteFailure(reason: errnoText(code), code: code)
        }
        p += n
        left -= n
    }
}

/// `writeFileAtomically` with a FileHandle: a file complete or not at all.
public func writeAtomically(to url: URL, what: String = "file", _ body: (FileHandle) throws -> Void) throws {
    try writeFileAtomically(url, what: what) { fd in
        let h = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        try body(h)
    }
}
