/// The deterministic generator behind synthetic checkpoints (shared bit for bit with
/// scripts/reference/synth.py).
public enum Synth {
    /// value[i] = float32(c + (2u − 1)·a), u from splitmix64 over a counter keyed by the tensor name and seed.
    public static func values(name: String, seed: UInt64, count: Int, amplitude a: Double, offset c: Double = 0) -> [Float] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { h ^= UInt64(byte); h = h &* 0x100_0000_01b3 }
        let golden: UInt64 = 0x9E37_79B9_7F4A_7C15
        let base = h ^ (seed &* golden)
        return [Float](unsafeUninitializedCapacity: count) { buf, n in
            for i in 0..<count {
                var z = base &+ UInt64(i + 1) &* golden
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                z = z ^ (z >> 31)
                let u = Double(z >> 11) * 0x1p-53
                buf[i] = Float(c + (2.0 * u - 1.0) * a)
            }
            n = count
        }
    }

}
