@testable import ZeroSegFormats

/// The zip reader: end records (zip64 too), central directory, local headers, each entry's bytes
/// (read byte by byte so that AddressSanitizer sees every access) and CRC.
let zipTarget = FuzzTarget(name: "zip", covers: "ZipArchive: EOCD/zip64 records, central directory, local headers, entry bytes, CRC-32") { bytes in
    do {
        let z = try ZipArchive(file: MappedFile(copying: bytes), what: "fuzz.zip")
        for e in z.entries {
            precondition(z[e.name] != nil)
            var sum: UInt8 = 0
            for b in z.bytes(e) { sum &+= b }
            _ = sum
            if (try? z.stored(e.name, what: "fuzz.zip")) != nil { try? z.checkCRC(e, what: "fuzz.zip") }
        }
    } catch { expectTyped(error) }
}
