import Foundation

/// Adds the time since the last lap to named totals (seconds, monotonic clock): the timings
/// that segmentation, evaluation and `zeroseg bench` report.
public struct Stopwatch {
    private var last: UInt64
    public init() { last = DispatchTime.now().uptimeNanoseconds }

    /// Seconds since the last lap (or creation), and starts the next lap.
    public mutating func lap() -> Double {
        let now = DispatchTime.now().uptimeNanoseconds
        defer { last = now }
        return Double(now &- last) / 1e9
    }

    /// Adds the lap to `timings[name]`.
    public mutating func lap(_ name: String, into timings: inout [String: Double]) {
        timings[name, default: 0] += lap()
    }
}
