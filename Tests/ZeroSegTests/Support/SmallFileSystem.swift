import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small tmpfs mounted on a fresh temporary folder, for the fault tests: a real full disk
/// (ENOSPC) and a real read-only file system (EROFS, which root cannot write either, unlike a
/// folder without write permission). Needs mount(8) to be allowed (root with CAP_SYS_ADMIN);
/// `canMount` says whether it is, and the tests that need it are disabled otherwise.
final class SmallFileSystem: @unchecked Sendable {
    let root: URL

    /// Whether a tmpfs can be mounted here (tried once).
    static let canMount: Bool = {
        guard let fs = try? SmallFileSystem(bytes: 64 * 1024) else { return false }
        fs.unmount()
        return true
    }()

    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel).
    init(bytes: Int) throws {
        root = temporaryDirectory("zeroseg-smallfs")
        let r = Self.run(["/bin/mount", "-t", "tmpfs", "-o", "size=\(bytes),mode=0755", "tmpfs", root.path])
        guard r == 0 else {
            try? FileManager.default.removeItem(at: root)
            throw SmallFileSystemError(message: "mount -t tmpfs failed (\(r))")
        }
    }

    deinit { unmount() }

    private var mounted = true
    private let lock = NSLock()

    func unmount() {
        let was = lock.withLock { () -> Bool in defer { mounted = false }; return mounted }
        guard was else { return }
        _ = Self.run(["/bin/umount", "-l", root.path])
        try? FileManager.default.removeItem(at: root)
    }

    /// Makes the file system read-only (writes fail with EROFS, also for root).
    func remountReadOnly() throws {
        let r = Self.run(["/bin/mount", "-o", "remount,ro", root.path])
        guard r == 0 else { throw SmallFileSystemError(message: "mount -o remount,ro failed (\(r))") }
    }

    /// Fills the file system: a file grows page by page until write(2) says ENOSPC. Returns its URL.
    @discardableResult
    func fill(name: String = "filler") throws -> URL {
        let u = root.appendingPathComponent(name)
        let fd = open(u.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw SmallFileSystemError(message: "cannot create \(u.path)") }
        defer { close(fd) }
        let page = [UInt8](repeating: 0x5A, count: 4096)
        for _ in 0..<1_000_000 {
            let n = page.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == ENOSPC { return u }
                throw SmallFileSystemError(message: "filling: \(String(cString: strerror(errno)))")
            }
            if n < page.count { continue }
        }
        throw SmallFileSystemError(message: "the file system did not fill up")
    }

    /// Bytes free (statvfs).
    var freeBytes: Int {
        var s = statvfs()
        guard statvfs(root.path, &s) == 0 else { return -1 }
        return Int(s.f_bavail) * Int(s.f_frsize)
    }

    private static func run(_ args: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }
}

struct SmallFileSystemError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Every file under `dir` (relative paths, hidden ones too), with its bytes.
func folderContents(_ dir: URL) throws -> [String: Data] {
    var out: [String: Data] = [:]
    let fm = FileManager.default
    guard let e = fm.enumerator(at: dir, includingPropertiesForKeys: [.isRegularFileKey], options: []) else { return [:] }
    let base = dir.standardizedFileURL.path + "/"
    for case let u as URL in e {
        guard (try u.resourceValues(forKeys: [.isRegularFileKey])).isRegularFile == true else { continue }
        let rel = String(u.standardizedFileURL.path.dropFirst(base.count))
        out[rel] = try Data(contentsOf: u)
    }
    return out
}

/// Temporary files of the atomic writer (`.NAME.zeroseg-tmp-...`) or of the output check under `dir`.
func leftoverTemporaryFiles(_ dir: URL) throws -> [String] {
    try folderContents(dir).keys.filter { $0.contains(".zeroseg-tmp-") || $0.contains(".zeroseg-write-test-") }.sorted()
}
