import Foundation
import ZeroSegCore
#if canImport(Glibc)
import Glibc
#endif

/// Element types zeroseg reads from safetensors files.
public enum DType: String, Sendable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", i64 = "I64", i32 = "I32"
    public var size: Int {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16: 2
        case .i64: 8
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range inside the data section (after the header).
    public let begin: Int, end: Int
    public var count: Int { shape.reduce(1, *) }
}

/// A read-only file mapped into memory; unmapped when the last reference goes.
final class MappedFile: @unchecked Sendable {
    let base: UnsafeRawPointer
    let size: Int

    init(path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ZeroSegError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ZeroSegError("cannot stat \(path)") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw ZeroSegError("\(path) is a directory, not a file") }
        size = Int(st.st_size)
        if size == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 16))
            isMapped = false
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ZeroSegError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
        isMapped = true
    }
    private let isMapped: Bool

    /// A copy of `bytes` in allocated memory of exactly that size (the parsers' fuzz targets: a read
    /// past the end is then an AddressSanitizer report, where a mapping would round up to a page).
    init(copying bytes: UnsafeRawBufferPointer) {
        size = bytes.count
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 64)
        if let src = bytes.baseAddress, size > 0 { p.copyMemory(from: src, byteCount: size) }
        base = UnsafeRawPointer(p)
        isMapped = false
    }

    deinit {
        if isMapped { munmap(UnsafeMutableRawPointer(mutating: base), size) }
        else { UnsafeMutableRawPointer(mutating: base).deallocate() }
    }
}

/// A checkpoint file seen as named tensors: safetensors here; PyTorch zip checkpoints too.
/// `rawPointer` gives the tensor's contiguous little-endian bytes (`count × dtype.size`).
public protocol TensorSource: AnyObject, Sendable {
    var path: String { get }
    var tensors: [String: TensorInfo] { get }
    func rawPointer(_ info: TensorInfo) -> UnsafeRawPointer
}

extension TensorSource {
    /// The tensor as Float32 values (converted from F16/BF16/integers; copied).
    public func floats(_ name: String) throws -> [Float] {
        guard let info = tensors[name] else { throw ZeroSegError("\((path as NSString).lastPathComponent): no tensor \(name)") }
        return SafetensorsFile.toFloats(rawPointer(info), info.dtype, info.count)
    }

    /// The tensor as Int values (integer dtypes only).
    public func ints(_ name: String) throws -> [Int] {
        guard let info = tensors[name] else { throw ZeroSegError("\((path as NSString).lastPathComponent): no tensor \(name)") }
        let p = rawPointer(info)
        switch info.dtype {
        case .i64: return (0..<info.count).map { Int(Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
        case .i32: return (0..<info.count).map { Int(Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        default: throw ZeroSegError("tensor \(name) is \(info.dtype.rawValue), not an integer tensor")
        }
    }
}

/// A memory-mapped safetensors file (https://github.com/huggingface/safetensors), header fully
/// validated: sane length, JSON object, known dtypes, offsets inside the file, shape x dtype equal
/// to the byte length, no overlapping tensors.
public final class SafetensorsFile: TensorSource, @unchecked Sendable {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    let file: MappedFile
    let dataStart: Int

    /// Largest header we accept (the format's own reference implementation uses 100 MB).
    static let maxHeader = 100_000_000

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path), path: path)
    }

    init(file: MappedFile, path: String) throws {
        self.path = path
        self.file = file
        let name = (path as NSString).lastPathComponent
        func bad(_ why: String) -> ZeroSegError { .badModel("invalid safetensors file \(name): \(why)") }
        guard file.size >= 8 else { throw bad("file is \(file.size) bytes, shorter than the 8-byte header length") }
        let raw = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
        guard raw >= 2, raw <= UInt64(Self.maxHeader) else { throw bad("header length \(raw) is not sane") }
        let n = Int(raw)
        guard 8 + n <= file.size else { throw bad("header length \(n) runs past the end of the file (\(file.size) bytes)") }
        let headerData = Data(bytes: file.base + 8, count: n)
        guard let json = try? JSONSerialization.jsonObject(with: headerData), let obj = json as? [String: Any] else {
            throw bad("header is not a JSON object")
        }
        dataStart = 8 + n
        let dataSize = file.size - dataStart
        var infos: [String: TensorInfo] = [:]
        var meta: [String: String] = [:]
        for (key, value) in obj {
            if key == "__metadata__" {
                guard let m = value as? [String: Any] else { throw bad("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw bad("__metadata__ value for \(k) is not a string") }
                    meta[k] = s
                }
                continue
            }
            guard let e = value as? [String: Any] else { throw bad("entry \(key) is not an object") }
            guard let ds = e["dtype"] as? String else { throw bad("entry \(key) has no dtype") }
            guard let dtype = DType(rawValue: ds) else { throw bad("tensor \(key) has unsupported dtype \(ds)") }
            guard let shapeAny = e["shape"] as? [Any] else { throw bad("tensor \(key) has no shape") }
            var shape: [Int] = []
            for d in shapeAny {
                guard let num = d as? NSNumber, num.doubleValue == Double(num.int64Value), num.int64Value >= 0 else {
                    throw bad("tensor \(key) has a bad shape")
                }
                shape.append(num.intValue)
            }
            guard let offs = e["data_offsets"] as? [Any], offs.count == 2,
                  let b = (offs[0] as? NSNumber)?.int64Value, let en = (offs[1] as? NSNumber)?.int64Value
            else { throw bad("tensor \(key) has bad data_offsets") }
            guard b >= 0, en >= b, en <= Int64(dataSize) else {
                throw bad("tensor \(key) offsets [\(b), \(en)] lie outside the data section (\(dataSize) bytes)")
            }
            guard let count = elementCount(shape) else { throw bad("tensor \(key) shape overflows") }
            let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.size)
            guard !overflow else { throw bad("tensor \(key) shape \(shape) x \(dtype.rawValue) overflows") }
            guard bytes == Int(en - b) else {
                throw bad("tensor \(key) shape \(shape) x \(dtype.rawValue) needs \(bytes) bytes, offsets give \(en - b)")
            }
            infos[key] = TensorInfo(name: key, dtype: dtype, shape: shape, begin: Int(b), end: Int(en))
        }
        let sorted = infos.values.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.begin < a.end {
            throw bad("tensors \(a.name) and \(b.name) overlap")
        }
        tensors = infos
        metadata = meta
    }

    /// Raw bytes of a tensor (inside the mapping).
    public func rawPointer(_ info: TensorInfo) -> UnsafeRawPointer { file.base + dataStart + info.begin }

    package static func toFloats(_ p: UnsafeRawPointer, _ dtype: DType, _ n: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: n) { buf, count in
            switch dtype {
            case .f32:
                memcpy(buf.baseAddress!, p, n * 4)
            case .f16:
                for i in 0..<n { buf[i] = Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            case .bf16:
                for i in 0..<n { buf[i] = Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
            case .i32:
                for i in 0..<n { buf[i] = Float(p.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
            case .i64:
                for i in 0..<n { buf[i] = Float(p.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
            }
            count = n
        }
    }

    /// Writes F32 tensors to a safetensors file, streaming, via a temporary file renamed into place.
    public static func write(_ tensors: [(name: String, shape: [Int], data: [Float])], metadata: [String: String] = [:],
                             to url: URL) throws {
        var header: [String: Any] = [:]
        var offset = 0
        for t in tensors {
            guard t.shape.allSatisfy({ $0 >= 0 }) && t.shape.reduce(1, *) == t.data.count else {
                throw ZeroSegError("safetensors write: shape \(t.shape) does not match the \(t.data.count) values of \(t.name)")
            }
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.data.count]]
            offset += 4 * t.data.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        try writeAtomically(to: url) { h in
            var n = UInt64(json.count).littleEndian
            try h.write(contentsOf: withUnsafeBytes(of: &n) { Data($0) })
            try h.write(contentsOf: json)
            for t in tensors { try t.data.withUnsafeBytes { try h.write(contentsOf: Data($0)) } }
        }
    }
}

/// The number of elements of a tensor of this shape (product of the dimensions), nil on overflow.
func elementCount(_ shape: [Int]) -> Int? {
    var count = 1
    for d in shape {
        let (p, overflow) = count.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        count = p
    }
    return count
}
