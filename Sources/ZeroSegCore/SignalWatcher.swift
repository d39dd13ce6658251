import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SIGTERM and SIGINT, taken from their default action (which ends the process at once) while the
/// watcher lives: the first calls `handler(signal, false)`, any later one `handler(signal, true)`.
/// Signals that arrive together (dispatch merges them into one event) count as that many: two
/// quick Ctrl-C's are a second signal, not one.
/// Used by `zeroseg serve` (drain, then stop) and by folder runs (finish the image in flight, then
/// stop). `cancel()` gives the signals their default action back.
public final class SignalWatcher: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []
    private let lock = NSLock()
    private var seen = 0

    public init(_ handler: @escaping @Sendable (_ signal: Int32, _ again: Bool) -> Void) {
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [weak self] in  // holds s until cancel() (dispatch then drops its handler)
                guard let self else { return }
                let merged = max(1, Int(s.data))  // signals merged into this event
                let n = self.lock.withLock { self.seen += merged; return self.seen }
                handler(sig, n > 1)
            }
            s.resume()
            sources.append(s)
        }
    }

    public func cancel() {
        for s in sources { s.cancel() }
        for sig in [SIGTERM, SIGINT] { signal(sig, SIG_DFL) }
    }

    /// "SIGINT", "SIGTERM", else "signal N".
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        default: return "signal \(signal)"
        }
    }
}

/// A request to stop a long run early, set from any thread (a signal handler, another task) and
/// read by the run between its steps: the step in flight finishes, the next is not started.
public final class StopRequest: @unchecked Sendable {
    private let lock = NSLock()
    private var _reason: String?
    private var _signal: Int32?

    public init() {}

    /// Asks the run to stop; `reason` is for messages ("SIGINT"); the first request is kept.
    public func stop(reason: String, signal: Int32? = nil) {
        lock.withLock {
            if _reason == nil { _reason = reason; _signal = signal }
        }
    }

    public var isStopped: Bool { lock.withLock { _reason != nil } }
    /// Why the run was asked to stop (nil: it was not).
    public var reason: String? { lock.withLock { _reason } }
    /// The signal that asked for the stop, if one did.
    public var signal: Int32? { lock.withLock { _signal } }
}
