import Foundation

/// When a download (or a question to the hub) that failed for a passing reason is tried again:
/// after the n-th failure in a row, `baseDelay · 2^(n-1)` seconds, at most `maxDelay`, times a
/// random factor in `jitter` (so that many clients do not come back at the same moment); a
/// server's `Retry-After` (429, 503) replaces the computed delay, also at most `maxDelay`. At most
/// `attempts` tries in a row fail before giving up. With the defaults (5 tries, 1 s, 30 s, 0.5-1):
/// waits of 0.5-1, 1-2, 2-4 and 4-8 s, at most 15 s in all.
public struct RetrySchedule: Sendable, Equatable {
    public var attempts: Int
    public var baseDelay: TimeInterval
    public var maxDelay: TimeInterval
    public var jitter: ClosedRange<Double>

    public init(attempts: Int = 5, baseDelay: TimeInterval = 1, maxDelay: TimeInterval = 30, jitter: ClosedRange<Double> = 0.5...1) {
        self.attempts = attempts; self.baseDelay = baseDelay; self.maxDelay = maxDelay; self.jitter = jitter
    }

    /// Seconds to wait after the `failures`-th failure in a row (1, 2, ...); `random` in 0...1
    /// picks the jitter factor.
    public func delay(afterFailure failures: Int, retryAfter: TimeInterval? = nil, random: Double = Double.random(in: 0...1)) -> TimeInterval {
        if let retryAfter { return max(0, min(retryAfter, maxDelay)) }
        let exponent = Double(max(0, min(failures - 1, 30)))
        let factor = jitter.lowerBound + (jitter.upperBound - jitter.lowerBound) * max(0, min(1, random))
        return min(baseDelay * pow(2, exponent), maxDelay) * factor
    }

    /// HTTP statuses that say "not now" rather than "no": tried again.
    public static let retryableStatuses: Set<Int> = [408, 429, 500, 502, 503, 504]

    /// A `Retry-After` header's seconds: a number of seconds, or an HTTP date (RFC 9110) from `now`.
    public static func retryAfterSeconds(_ header: String?, now: Date = Date()) -> TimeInterval? {
        guard let h = header?.trimmingCharacters(in: .whitespaces), !h.isEmpty else { return nil }
        if let s = Int(h) { return s >= 0 ? TimeInterval(s) : nil }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let d = f.date(from: h) else { return nil }
        return max(0, d.timeIntervalSince(now))
    }
}
