import ZeroSeg
@testable import ZeroSegFormats

/// The safetensors header (length, JSON, dtypes, shapes, offsets, overlaps) and every tensor's
/// bytes as floats / ints, over an in-memory copy of exactly the input's size.
let safetensorsTarget = FuzzTarget(name: "safetensors", covers: "SafetensorsFile: header, tensor table, tensor data") { bytes in
    do {
        let f = try SafetensorsFile(file: MappedFile(copying: bytes), path: "fuzz.safetensors")
        for (name, info) in f.tensors.sorted(by: { $0.key < $1.key }) where info.count <= 1 << 20 {
            let v = try f.floats(name)
            precondition(v.count == info.count)
            if info.dtype == .i64 || info.dtype == .i32 { _ = try f.ints(name) }
        }
        _ = f.metadata.count
    } catch { expectTyped(error) }
}
