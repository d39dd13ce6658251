import ZeroSegCore
import ZeroSegFormats
import ZeroSegImaging
import ZeroSegText
import Foundation

/// Measurements for `zeroseg bench`: the machine's sgemm rate (the floor), the encoders and the
/// segmentation case, with FLOP counts so that every time can be read as a ratio to the floor.
public enum Bench {
    /// FLOPs (multiply-add = 2) of one image through the vision tower at `size` pixels, projection included.
    public static func visionFLOPs(_ c: CLIPConfig, height: Int, width: Int) -> Double {
        let v = c.vision, p = v.patchSize
        let t = Double((height / p) * (width / p) + 1), w = Double(v.hiddenSize), i = Double(v.intermediateSize)
        let patch = 2 * (t - 1) * Double(3 * p * p) * w
        let layer = 2 * t * (4 * w * w + 2 * w * i) + 2 * 2 * t * t * w
        return patch + Double(v.numHiddenLayers) * layer + 2 * Double(c.projectionDim) * w
    }

    /// FLOPs of the text tower for one prompt of `tokens` tokens (full causal attention counted as square).
    public static func textFLOPs(_ c: CLIPConfig, tokens: Int) -> Double {
        let x = c.text, t = Double(tokens), w = Double(x.hiddenSize), i = Double(x.intermediateSize)
        return Double(x.numHiddenLayers) * (2 * t * (4 * w * w + 2 * w * i) + 2 * 2 * t * t * w) + 2 * Double(c.projectionDim) * w
    }

    /// sgemm rate in FLOP/s on the shapes of a ViT-B/16 layer at 224 px (197 tokens: qkv, out, fc1,
    /// fc2), best of `repeats`, split over `threads` as the encoders split them (`linear`).
    public static func sgemmRate(threads: Int, width: Int = 768, inner: Int = 3072, tokens: Int = 197, repeats: Int = 20) -> Double {
        let budget = enterThreads(threads)
        defer { budget.leave() }
        let shapes = [(tokens, 3 * width, width), (tokens, width, width), (tokens, inner, width), (tokens, width, inner)]
        let maxA = shapes.map { $0.0 * $0.2 }.max()!, maxB = shapes.map { $0.1 * $0.2 }.max()!, maxC = shapes.map { $0.0 * $0.1 }.max()!
        let a = Buffer(Synth.values(name: "a", seed: 1, count: maxA, amplitude: 1))
        let b = Buffer(Synth.values(name: "b", seed: 2, count: maxB, amplitude: 1))
        let c = Buffer(zeros: maxC)
        var flops = 0.0
        for (m, n, k) in shapes { flops += 2 * Double(m * n * k) }
        func once() {
            for (m, n, k) in shapes { linear(a.ptr, b.ptr, nil, c.ptr, m: m, n: n, k: k) }
        }
        once()
        var best = Double.infinity
        for _ in 0..<repeats {
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<5 { once() }
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / 5)
        }
        withExtendedLifetime((a, b, c)) {}
        return flops / best
    }

    /// Best of `repeats` wall-clock seconds of `body` (after one warm-up run when `warmUp`).
    public static func best(_ repeats: Int, warmUp: Bool = true, _ body: () throws -> Void) rethrows -> Double {
        if warmUp { try body() }
        var b = Double.infinity
        for _ in 0..<max(1, repeats) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            b = min(b, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        return b
    }

    /// The best of `repeats` timed runs of each body, the bodies taking turns (round r runs every
    /// body once, in order), after one warm-up round: the ratios of cases measured this way see the
    /// same state of a shared machine.
    public static func bestInterleaved(_ repeats: Int, _ bodies: [() throws -> Void]) throws -> [Double] {
        for body in bodies { try body() }
        var b = [Double](repeating: .infinity, count: bodies.count)
        for _ in 0..<max(1, repeats) {
            for (i, body) in bodies.enumerated() {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try body()
                b[i] = min(b[i], Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
        }
        return b
    }

    /// Resets the peak resident set size that `peakRSSSinceReset` reads (Linux: writes 5 to
    /// /proc/self/clear_refs); false when the system cannot (the peak is then the process's).
    @discardableResult
    public static func resetPeakRSS() -> Bool {
        guard let f = fopen("/proc/self/clear_refs", "w") else { return false }
        defer { fclose(f) }
        return fputs("5", f) >= 0
    }

    /// The peak resident set size since `resetPeakRSS` (VmHWM in /proc/self/status), in bytes;
    /// `peakRSS()` where that is not available.
    public static func peakRSSSinceReset() -> Int { procStatus("VmHWM") ?? peakRSS() }

    /// The resident set size now (VmRSS), in bytes (0 when not available).
    public static func currentRSS() -> Int { procStatus("VmRSS") ?? 0 }

    /// A "kB" field of /proc/self/status, in bytes.
    static func procStatus(_ key: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
        }
        return nil
    }

    /// Peak resident set size of this process so far, in bytes.
    public static func peakRSS() -> Int {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return u.ru_maxrss * 1024
    }
}
