@testable import ZeroSegFormats

/// The PyTorch checkpoint reader (zip and legacy formats, storages, strides, views, copies) with
/// CRC checks, then every tensor's values.
let torchTarget = FuzzTarget(name: "torch", covers: "TorchCheckpoint: zip + legacy .bin, storages, strided tensors, CRCs, values") { bytes in
    do {
        let c = try TorchCheckpoint(file: MappedFile(copying: bytes), path: "fuzz.bin", verifyChecksums: true)
        for (name, info) in c.tensors.sorted(by: { $0.key < $1.key }) where info.count <= 1 << 20 {
            let v = try c.floats(name)
            precondition(v.count == info.count)
        }
    } catch { expectTyped(error) }
}
