import CKernels
import CZlib
import Foundation
import ZeroSegCore
#if canImport(Glibc)
import Glibc
#endif

// The index's vectors: float16 rows in append-only shard files, read through mmap.
//
// A shard file is a 64-byte header then rows of `dim` float16 values (IEEE binary16, little
// endian), row `slot` at byte 64 + slot·dim·2:
//
//   0  magic "ZSVF16\0\u{1}" (8 bytes, the last byte is the format version)
//   8  dim (u32 LE)          12 kind (u32 LE: 0 image, 1 region)      16 shard number (u32 LE)
//   20 the index's id (16 bytes; a shard of another index is refused)  36..64 zero
//
// Which slots hold live vectors is the database's business (`IndexDatabase`): a slot is written
// and flushed before the transaction that names it commits, so a crash leaves at most unnamed
// rows past the end, which the next writer overwrites.

/// What a vector stands for: a whole image or one region of it.
public enum VectorKind: Int, Sendable, Codable, CaseIterable {
    case image = 0, region = 1

    var fileStem: String { self == .image ? "image" : "region" }
}

/// Rows per shard file (64 MiB at d = 512).
let shardCapacity = 65_536
let shardHeaderBytes = 64
private let shardMagic: [UInt8] = Array("ZSVF16".utf8) + [0, 1]

func shardURL(_ dir: URL, kind: VectorKind, number: Int) -> URL {
    dir.appendingPathComponent(String(format: "%@-%05d.f16", kind.fileStem, number))
}

private func errnoText() -> String { String(cString: strerror(errno)) }

/// Appends rows to one shard (the writer's side).
final class ShardWriter {
    let url: URL
    let dim: Int
    private let fd: Int32

    /// Opens (creating with its header when missing) the shard file; an existing header must match.
    init(url: URL, dim: Int, kind: VectorKind, number: Int, indexID: UUID) throws {
        self.url = url
        self.dim = dim
        fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ZeroSegError.io("cannot open vector shard \(url.path): \(errnoText())", file: url.path) }
        var st = stat()
        fstat(fd, &st)
        let header = makeShardHeader(dim: dim, kind: kind, number: number, indexID: indexID)
        if st.st_size < shardHeaderBytes {
            let ok = header.withUnsafeBytes { pwrite(fd, $0.baseAddress, shardHeaderBytes, 0) } == shardHeaderBytes
            guard ok else { close(fd); throw ZeroSegError.io("cannot write vector shard \(url.path): \(errnoText())", file: url.path) }
        } else {
            var have = [UInt8](repeating: 0, count: shardHeaderBytes)
            _ = have.withUnsafeMutableBytes { pread(fd, $0.baseAddress, shardHeaderBytes, 0) }
            guard have == header else {
                close(fd)
                throw ZeroSegError.badInput("vector shard \(url.path) is corrupt or belongs to another index (its header does not match)", file: url.path)
            }
        }
    }

    deinit { close(fd) }

    /// Writes rows [count, dim] (float32, stored as float16 rounded to nearest even) at `slot`;
    /// returns the CRC-32 of the shard's rows so far, continued from `crc` (that of rows 0..<slot).
    @discardableResult
    func write(_ rows: UnsafePointer<Float>, count: Int, at slot: Int, crc: UInt32 = 0) throws -> UInt32 {
        let n = count * dim
        var half = [UInt16](repeating: 0, count: n)
        half.withUnsafeMutableBufferPointer { zs_f32_to_f16(rows, $0.baseAddress, n) }
        let bytes = n * 2, offset = off_t(shardHeaderBytes + slot * dim * 2)
        var done = 0
        try half.withUnsafeBytes { raw in
            while done < bytes {
                let r = pwrite(fd, raw.baseAddress! + done, bytes - done, offset + off_t(done))
                if r < 0 && errno == EINTR { continue }
                guard r > 0 else { throw ZeroSegError.io("cannot write vector shard \(url.path): \(errnoText())", file: url.path) }
                done += r
            }
        }
        return half.withUnsafeBytes { shardCRC(crc, $0) }
    }

    /// Flushes written rows to disk (before the database names them).
    func sync() throws {
        guard fdatasync(fd) == 0 else { throw ZeroSegError.io("cannot flush vector shard \(url.path): \(errnoText())", file: url.path) }
    }

    /// Cuts the file after `rows` rows (compaction's unused tail, a crashed writer's leftovers).
    func truncate(rows: Int) {
        _ = ftruncate(fd, off_t(shardHeaderBytes + rows * dim * 2))
    }
}

func makeShardHeader(dim: Int, kind: VectorKind, number: Int, indexID: UUID) -> [UInt8] {
    var h = shardMagic
    func u32(_ v: Int) { let x = UInt32(v); h += [UInt8(x & 0xff), UInt8(x >> 8 & 0xff), UInt8(x >> 16 & 0xff), UInt8(x >> 24)] }
    u32(dim); u32(kind.rawValue); u32(number)
    withUnsafeBytes(of: indexID.uuid) { h += $0 }
    h += [UInt8](repeating: 0, count: shardHeaderBytes - h.count)
    return h
}

/// A read-only memory map of one shard's first `rows` rows (the reader's side). Immutable:
/// rows below `rows` never change while they are named by the snapshot that mapped them.
final class ShardMap: @unchecked Sendable {
    let url: URL
    let dim: Int
    let rows: Int
    private let base: UnsafeMutableRawPointer?
    private let length: Int

    init(url: URL, dim: Int, kind: VectorKind, number: Int, indexID: UUID, rows: Int) throws {
        self.url = url
        self.dim = dim
        self.rows = rows
        let fd = open(url.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ZeroSegError.badInput("vector shard \(url.path) is missing or unreadable (\(errnoText())): the index is damaged; rebuild it", file: url.path)
        }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let need = shardHeaderBytes + rows * dim * 2
        guard Int(st.st_size) >= need else {
            throw ZeroSegError.badInput("vector shard \(url.path) is truncated (\(st.st_size) bytes, \(need) needed for its \(rows) rows): the index is damaged; rebuild it", file: url.path)
        }
        var have = [UInt8](repeating: 0, count: shardHeaderBytes)
        _ = have.withUnsafeMutableBytes { pread(fd, $0.baseAddress, shardHeaderBytes, 0) }
        guard have == makeShardHeader(dim: dim, kind: kind, number: number, indexID: indexID) else {
            throw ZeroSegError.badInput("vector shard \(url.path) is corrupt or belongs to another index (its header does not match)", file: url.path)
        }
        length = need
        if rows == 0 {
            base = nil
        } else {
            let p = mmap(nil, need, PROT_READ, MAP_SHARED, fd, 0)
            guard let p, p != MAP_FAILED else {
                throw ZeroSegError.io("cannot map vector shard \(url.path): \(errnoText())", file: url.path)
            }
            base = p
        }
    }

    deinit { if let base { munmap(base, length) } }

    /// Row `slot`'s float16 values: [dim].
    func row(_ slot: Int) -> UnsafePointer<UInt16> {
        precondition(slot >= 0 && slot < rows, "slot \(slot) outside 0..<\(rows)")
        return UnsafePointer((base! + shardHeaderBytes).assumingMemoryBound(to: UInt16.self) + slot * dim)
    }

    /// CRC-32 of rows 0..<rows as stored (what the database records per shard).
    func crc() -> UInt32 {
        guard rows > 0 else { return 0 }
        return shardCRC(0, UnsafeRawBufferPointer(start: base! + shardHeaderBytes, count: rows * dim * 2))
    }

    /// Rows [start, start + count) as float32 into out: [count, dim].
    func rows(_ start: Int, _ count: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(start >= 0 && count >= 0 && start + count <= rows)
        guard count > 0 else { return }
        zs_f16_to_f32(row(start), out, count * dim)
    }
}

/// zlib's CRC-32 of `bytes`, continued from `crc`.
func shardCRC(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
    var c = UInt(crc), p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), left = bytes.count
    while left > 0 {
        let n = min(left, 1 << 30)
        c = UInt(crc32(uLong(c), p, uInt(n)))
        p = p.map { $0 + n }
        left -= n
    }
    return UInt32(c)
}
