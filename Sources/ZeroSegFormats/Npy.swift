import Foundation
import ZeroSegCore

// NumPy .npy output (format version 1.0, see numpy.lib.format), for the score maps and
// embeddings zeroseg can save next to its PNGs.

/// Writes `data` as a NumPy .npy file: format 1.0, dtype `'<f4'` (float32 little-endian),
/// C order, the header byte-for-byte what `numpy.save` writes (numpy 2.x: the spare
/// growth space after the dict, then spaces and a newline up to a multiple of 64 bytes).
///
/// `shape` must multiply to `data.count` (`[]` is a 0-d array holding one value).
/// The file is written atomically: into a temporary file in the same directory, renamed into
/// place when complete; on any error the temporary file is removed and nothing is left.
public func writeNpy(_ data: [Float], shape: [Int], to url: URL) throws {
    try data.withUnsafeBufferPointer { try writeNpy($0, shape: shape, to: url) }
}

/// As `writeNpy(_:shape:to:)`, from memory the caller owns; streamed in 4 MiB chunks, so no
/// copy of a large array is made.
public func writeNpy(_ data: UnsafeBufferPointer<Float>, shape: [Int], to url: URL) throws {
    let what = "npy file"
    guard shape.allSatisfy({ $0 >= 0 }) else {
        throw ZeroSegError("cannot write \(what) \(url.path): negative dimension in shape \(shape)")
    }
    guard let count = elementCount(shape) else { throw ZeroSegError("cannot write \(what) \(url.path): shape \(shape) is too large") }
    guard count == data.count else {
        throw ZeroSegError("cannot write \(what) \(url.path): shape \(shape) holds \(count) values, not \(data.count)")
    }
    let header = npyHeader(shape: shape)
    guard header.count - 10 <= Int(UInt16.max) else {
        throw ZeroSegError("cannot write \(what) \(url.path): shape \(shape) has too many dimensions for .npy 1.0")
    }
    try writeFileAtomically(url, what: what) { fd in
        try header.withUnsafeBytes { try writeAll(fd, $0) }
        let chunk = 1 << 20  // floats per write
        var start = 0
        while start < data.count {
            let n = min(chunk, data.count - start)
            let part = UnsafeBufferPointer(rebasing: data[start..<start + n])
            #if _endian(little)
            try writeAll(fd, UnsafeRawBufferPointer(part))
            #else
            let le = part.map { $0.bitPattern.littleEndian }
            try le.withUnsafeBytes { try writeAll(fd, $0) }
            #endif
            start += n
        }
    }
}

/// The complete .npy 1.0 header for a float32 C-order array of `shape`: magic, version,
/// little-endian header length, then the dict text as numpy 2.x pads it.
func npyHeader(shape: [Int]) -> [UInt8] {
    let shapeText: String
    switch shape.count {
    case 0: shapeText = "()"
    case 1: shapeText = "(\(shape[0]),)"
    default: shapeText = "(" + shape.map(String.init).joined(separator: ", ") + ")"
    }
    var dict = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"
    // numpy leaves room for the first axis to grow to 21 digits (GROWTH_AXIS_MAX_DIGITS).
    if let first = shape.first {
        dict += String(repeating: " ", count: max(0, 21 - String(first).count))
    }
    // Magic (6) + version (2) + length (2) + dict + padding + "\n" = a multiple of 64. As numpy's
    // `_wrap_header` (padlen = 64 - x % 64), an already aligned header still gets 64 spaces.
    let unpadded = 10 + dict.utf8.count + 1
    dict += String(repeating: " ", count: 64 - unpadded % 64) + "\n"
    let n = dict.utf8.count
    return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF)] + Array(dict.utf8)
}
