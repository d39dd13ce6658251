/// SplitMix64 (Steele, Lea, Flood 2014): zeroseg's one random number generator. Every seeded
/// stream in the library (synthetic weights, k-means seeding, tuning shuffles) comes from it, so
/// results depend only on the seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform double in [0, 1) from the top 53 bits of the next value.
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}

/// The deterministic generator behind synthetic checkpoints (shared bit for bit with
/// scripts/reference/synth.py).
public enum Synth {
    /// value[i] = float32(c + (2u − 1)·a), u the i-th draw of SplitMix64 seeded with the FNV-1a
    /// hash of the tensor name xor the seed times the golden ratio constant.
    public static func values(name: String, seed: UInt64, count: Int, amplitude a: Double, offset c: Double = 0) -> [Float] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { h ^= UInt64(byte); h = h &* 0x100_0000_01b3 }
        var rng = SplitMix64(seed: h ^ (seed &* 0x9E37_79B9_7F4A_7C15))
        return [Float](unsafeUninitializedCapacity: count) { buf, n in
            for i in 0..<count { buf[i] = Float(c + (2.0 * rng.nextUnit() - 1.0) * a) }
            n = count
        }
    }
}
