import CZlib
import ZeroSegCore
import Foundation

/// A minimal reader of *stored* (uncompressed) ZIP archives inside a memory-mapped file, as
/// written by `torch.save` (torch >= 1.6) and `torch.jit.save`.
///
/// Why our own reader rather than ZIPFoundation or libzip: PyTorch stores every record
/// uncompressed (ZIP_STORED) and 64-byte aligned precisely so that a reader can use the tensor
/// bytes where they lie. With the file memory-mapped, an entry is just a (offset, size) range of
/// the map, so a checkpoint of hundreds of megabytes is "loaded" without reading or copying it;
/// general-purpose libraries extract entries into new buffers (ZIPFoundation copies through
/// `Data` chunks). The part of the format needed for that is small: the end-of-central-directory
/// record (and its zip64 variant), the central directory, and each entry's local header (to find
/// where its data starts). Everything is validated against the file size; encrypted, multi-disk
/// and duplicate entries are refused, and so is reading a compressed entry.
///
/// Format reference: PKWARE APPNOTE.TXT 6.3.x, sections 4.3.7 (local file header), 4.3.12
/// (central directory header), 4.3.14-16 (zip64 end records, end of central directory),
/// 4.5.3 (zip64 extended information extra field).
struct ZipArchive {
    struct Entry {
        let name: String
        /// Offset of the entry's data in the file.
        let dataOffset: Int
        let size: Int
        let crc32: UInt32
        /// Compression method: 0 = stored. Compressed entries are listed (TorchScript archives
        /// deflate their code/ records) but `stored(_:what:)` refuses them.
        let method: Int
    }

    /// Entries in central-directory order.
    let entries: [Entry]
    let byName: [String: Int]
    let file: MappedFile

    private static let maxComment = 65_535
    private static let eocdSize = 22

    /// `what` names the file in error messages ("invalid zip archive <what>: ...").
    init(file: MappedFile, what: String) throws {
        self.file = file
        let size = file.size
        let base = file.base
        func bad(_ why: String) -> ZeroSegError { ZeroSegError("invalid zip archive \(what): \(why)") }
        func u16(_ o: Int) -> Int { Int(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt16.self))) }
        func u32(_ o: Int) -> Int { Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt32.self))) }
        func u64(_ o: Int) throws -> Int {
            let v = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt64.self))
            guard v <= UInt64(Int.max / 2) else { throw bad("a zip64 field (\(v)) is absurdly large") }
            return Int(v)
        }

        // 1. End of central directory: the last 22..22+65535 bytes hold it; its comment must end
        //    exactly at the end of the file (so a truncated file is not mistaken for a valid one).
        guard size >= Self.eocdSize else { throw bad("file is \(size) bytes, too short for a zip archive (truncated?)") }
        var eocd = -1
        var p = size - Self.eocdSize
        let lowest = max(0, size - Self.eocdSize - Self.maxComment)
        while p >= lowest {
            if u32(p) == 0x0605_4B50, p + Self.eocdSize + u16(p + 20) == size { eocd = p; break }
            p -= 1
        }
        guard eocd >= 0 else { throw bad("no end-of-central-directory record (truncated or not a zip file)") }
        guard u16(eocd + 4) == 0, u16(eocd + 6) == 0 else { throw bad("multi-disk archives are not supported") }
        var count = u16(eocd + 10)
        var cdSize = u32(eocd + 12)
        var cdOffset = u32(eocd + 16)
        var cdLimit = eocd  // the central directory must end before this

        // 2. Zip64 end records (torch always writes them): locator 20 bytes before the EOCD.
        if eocd >= 20, u32(eocd - 20) == 0x0706_4B50 {
            let loc = eocd - 20
            guard u32(loc + 4) == 0, u32(loc + 16) <= 1 else { throw bad("multi-disk zip64 archives are not supported") }
            let z = try u64(loc + 8)
            guard z <= loc - 56 else { throw bad("zip64 end record offset \(z) is outside the file") }
            guard u32(z) == 0x0606_4B50 else { throw bad("no zip64 end-of-central-directory record at offset \(z)") }
            let recordSize = try u64(z + 4)
            guard recordSize >= 44, recordSize <= loc - z - 12 else { throw bad("zip64 end record has a bad size \(recordSize)") }
            guard u32(z + 16) == 0, u32(z + 20) == 0 else { throw bad("multi-disk archives are not supported") }
            count = try u64(z + 32)
            cdSize = try u64(z + 40)
            cdOffset = try u64(z + 48)
            cdLimit = z
        } else if count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF {
            throw bad("zip64 archive without a zip64 end-of-central-directory locator (truncated?)")
        }
        guard cdOffset <= cdLimit, cdSize <= cdLimit - cdOffset else {
            throw bad("central directory (offset \(cdOffset), \(cdSize) bytes) lies outside the file")
        }
        guard count <= cdSize / 46 else { throw bad("central directory of \(cdSize) bytes cannot hold \(count) entries") }

        // 3. Central directory headers, each checked against its local header.
        var list: [Entry] = []
        var index: [String: Int] = [:]
        list.reserveCapacity(count)
        var q = cdOffset
        let cdEnd = cdOffset + cdSize
        for i in 0..<count {
            guard q + 46 <= cdEnd, u32(q) == 0x0201_4B50 else { throw bad("central directory entry \(i) is corrupt") }
            let flags = u16(q + 8), method = u16(q + 10)
            let crc = UInt32(u32(q + 16))
            var csize = u32(q + 20), usize = u32(q + 24)
            let nameLen = u16(q + 28), extraLen = u16(q + 30), commentLen = u16(q + 32)
            var disk = u16(q + 34)
            var local = u32(q + 42)
            let varEnd = q + 46 + nameLen + extraLen + commentLen
            guard varEnd <= cdEnd else { throw bad("central directory entry \(i) runs past the directory") }
            let name = String(decoding: UnsafeRawBufferPointer(start: base + q + 46, count: nameLen), as: UTF8.self)
            // Zip64 extended information: present fields replace those set to all ones, in order.
            var e = q + 46 + nameLen
            let extraEnd = e + extraLen
            while e + 4 <= extraEnd {
                let id = u16(e), len = u16(e + 2)
                guard e + 4 + len <= extraEnd else { throw bad("entry \(name) has a corrupt extra field") }
                if id == 0x0001 {
                    var f = e + 4
                    func next() throws -> Int {
                        guard f + 8 <= e + 4 + len else { throw bad("entry \(name) has a short zip64 extra field") }
                        defer { f += 8 }
                        return try u64(f)
                    }
                    if usize == 0xFFFF_FFFF { usize = try next() }
                    if csize == 0xFFFF_FFFF { csize = try next() }
                    if local == 0xFFFF_FFFF { local = try next() }
                    if disk == 0xFFFF {
                        guard f + 4 <= e + 4 + len else { throw bad("entry \(name) has a short zip64 extra field") }
                        disk = u32(f)
                    }
                }
                e += 4 + len
            }
            guard disk == 0 else { throw bad("entry \(name) is on another disk (multi-disk archives are not supported)") }
            guard flags & 0x41 == 0 else { throw bad("entry \(name) is encrypted") }
            guard index[name] == nil else { throw bad("duplicate entry \(name)") }
            guard method != 0 || csize == usize else { throw bad("stored entry \(name) has compressed size \(csize) != size \(usize)") }
            // Local header: its name and extra lengths locate the data.
            guard local <= cdOffset, cdOffset - local >= 30, u32(local) == 0x0403_4B50 else {
                throw bad("entry \(name): no local header at offset \(local)")
            }
            let lNameLen = u16(local + 26), lExtraLen = u16(local + 28)
            let data = local + 30 + lNameLen + lExtraLen
            guard data <= cdOffset, csize <= cdOffset - data else {
                throw bad("entry \(name) (\(csize) bytes at offset \(data)) runs past the start of the central directory (truncated?)")
            }
            guard lNameLen == nameLen, memcmp(base + local + 30, base + q + 46, nameLen) == 0 else {
                throw bad("entry \(name): local header names a different file")
            }
            index[name] = list.count
            list.append(Entry(name: name, dataOffset: data, size: csize, crc32: crc, method: method))
            q = varEnd
        }
        entries = list
        byName = index
    }

    subscript(name: String) -> Entry? { byName[name].map { entries[$0] } }

    /// The entry, which must be stored (compressed entries are listed but cannot be read in place).
    func stored(_ name: String, what: String) throws -> Entry? {
        guard let e = self[name] else { return nil }
        guard e.method == 0 else {
            throw ZeroSegError("\(what): zip entry \(name) is compressed (method \(e.method)\(e.method == 8 ? ", deflate" : "")); "
                + "only stored (uncompressed) entries are read, as torch.save writes them: re-save it with torch.save")
        }
        return e
    }

    func bytes(_ e: Entry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: file.base + e.dataOffset, count: e.size)
    }

    /// CRC-32 of an entry's data compared with the central directory's.
    func checkCRC(_ e: Entry, what: String) throws {
        var crc: uLong = crc32(0, nil, 0)
        var done = 0
        while done < e.size {  // zlib's length is a 32-bit uInt
            let n = min(e.size - done, 1 << 30)
            crc = crc32(crc, (file.base + e.dataOffset + done).assumingMemoryBound(to: Bytef.self), uInt(n))
            done += n
        }
        guard UInt32(truncatingIfNeeded: crc) == e.crc32 else {
            throw ZeroSegError("invalid zip archive \(what): CRC-32 mismatch in entry \(e.name) (corrupt file)")
        }
    }
}
