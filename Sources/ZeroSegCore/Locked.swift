import Foundation

/// A value behind a lock (`NSLock`, i.e. a pthread mutex). Used instead of Synchronization's
/// `Mutex`, whose contended path on Linux (a PI futex inside the uninstrumented standard library)
/// ThreadSanitizer cannot see: it then reports the accesses the mutex orders as data races.
package final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    package init(_ value: Value) { self.value = value }

    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
