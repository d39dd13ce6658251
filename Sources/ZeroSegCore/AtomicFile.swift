import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Atomic files

/// Thrown inside a `writeFileAtomically` body: the reason, without the path (added outside).
package struct AtomicWriteFailure: Error {
    package init(reason: String) { self.reason = reason }
    package var reason: String
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
    func fail(_ why: String) -> ZeroSegError { .io("cannot write \(what) \(path): \(why)", file: path) }
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
    guard fd >= 0 else { throw fail(errnoText(code)) }

    var ok = false
    defer {
        if fd >= 0 { close(fd) }
        if !ok { unlink(tmp) }
    }
    do {
        try body(fd)
    } catch let e as AtomicWriteFailure {
        throw fail(e.reason)
    } catch let e as ZeroSegError {
        throw e
    } catch {
        throw fail("\(error)")
    }
    guard fsync(fd) == 0 else { throw fail(errnoText(errno)) }
    let closed = close(fd)
    fd = -1
    guard closed == 0 else { throw fail(errnoText(errno)) }
    guard rename(tmp, path) == 0 else { throw fail(errnoText(errno)) }
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
            if errno == EINTR { continue }
            throw AtomicWriteFailure(reason: errnoText(errno))
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
