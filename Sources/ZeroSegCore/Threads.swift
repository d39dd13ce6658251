import CBLAS
import Foundation

// Threads. Every public entry point that computes (encoders, segmenters, tuning) takes a `threads`
// count and runs its body inside `withThreads(threads)` (or `enterThreads`); kernels read that
// budget on the calling thread (`threadBudget`) and split their work into at most that many parts,
// partitioned by the shapes and the budget alone (never by timing), with `parallelFor`. Inside a
// part the budget is 1 (no nested parallelism). OpenBLAS itself always runs single-threaded (`ensureSingleThreadedBLAS`,
// set once per process and never changed): no process-global setting is touched per call, so
// callers on several threads do not disturb each other, and a given input and thread count give
// the same bits run after run. (Code outside zeroseg that changes OpenBLAS's thread count in the
// same process would undo this; zeroseg never reads it.)

/// All cores, the default thread count; `ZEROSEG_THREADS=N` (a positive integer) overrides it,
/// so that a whole process (e.g. the test suite, or the CLI's `--threads` default) runs with N.
public let defaultThreads: Int = {
    if let s = ProcessInfo.processInfo.environment["ZEROSEG_THREADS"], let n = Int(s.trimmingCharacters(in: .whitespaces)), n >= 1 {
        return min(n, 256)
    }
    return ProcessInfo.processInfo.activeProcessorCount
}()

/// OpenBLAS's process-global thread count is set to 1 once, before the first BLAS call from
/// zeroseg (every cblas call site calls `ensureSingleThreadedBLAS()`; Swift runs this initialiser
/// exactly once, thread-safely).
private let blasSingleThreaded: Bool = {
    openblas_set_num_threads(1)
    return true
}()

/// Makes sure OpenBLAS runs single-threaded (see `blasSingleThreaded`); cheap after the first call.
@inline(__always)
package func ensureSingleThreadedBLAS() {
    _ = blasSingleThreaded
}

/// The thread-local slot of the budget (0 = unset = 1 thread).
private let budgetKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, nil)
    precondition(rc == 0, "pthread_key_create failed (\(rc))")
    return key
}()

/// Threads the kernels called on this thread may use: the innermost `withThreads` around the
/// call, else 1.
package var threadBudget: Int {
    max(1, Int(bitPattern: pthread_getspecific(budgetKey)))
}

/// Runs `body` with a thread budget of `threads` (at least 1) on the calling thread, then restores
/// the previous budget.
package func withThreads<R>(_ threads: Int, _ body: () throws -> R) rethrows -> R {
    let previous = pthread_getspecific(budgetKey)
    pthread_setspecific(budgetKey, UnsafeRawPointer(bitPattern: max(1, threads)))
    defer { pthread_setspecific(budgetKey, previous) }
    return try body()
}

/// Runs `body(0..<parts)` in parallel (`parts` iterations of `DispatchQueue.concurrentPerform`,
/// the calling thread taking part), each with a thread budget of 1. Callers choose `parts` from
/// shapes and `threadBudget` only, so results do not depend on scheduling.
package func parallelFor(_ parts: Int, _ body: (Int) -> Void) {
    if parts <= 1 {
        if parts == 1 { withThreads(1) { body(0) } }
        return
    }
    withoutActuallyEscaping(body) { b in
        nonisolated(unsafe) let f = b
        DispatchQueue.concurrentPerform(iterations: parts) { i in withThreads(1) { f(i) } }
    }
}

/// `withThreads` for the rest of a function body:
/// `let budget = enterThreads(threads); defer { budget.leave() }`.
package func enterThreads(_ threads: Int) -> ThreadBudgetScope {
    let scope = ThreadBudgetScope(previous: pthread_getspecific(budgetKey))
    pthread_setspecific(budgetKey, UnsafeRawPointer(bitPattern: max(1, threads)))
    return scope
}

/// The budget to restore when leaving an `enterThreads` scope.
package struct ThreadBudgetScope {
    let previous: UnsafeMutableRawPointer?
    /// Restores the budget from before `enterThreads` (call on the same thread, in a `defer`).
    package func leave() { pthread_setspecific(budgetKey, previous) }
}

/// OpenBLAS's thread count after `ensureSingleThreadedBLAS` (for the tests: always 1).
package func openBLASThreads() -> Int {
    ensureSingleThreadedBLAS()
    return Int(openblas_get_num_threads())
}
