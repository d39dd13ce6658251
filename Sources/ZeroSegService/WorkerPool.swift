import Foundation

/// Why the pool did not run a job.
enum PoolRefusal: Error, Equatable {
    /// Every worker is busy and the queue is full.
    case full
    /// The job's answer was not ready within its timeout.
    case timedOut(seconds: Double)
    /// The pool is stopping.
    case stopped
}

/// A bounded pool of worker threads for blocking, compute-heavy jobs (an encoder pass uses every
/// core it is given): `workers` jobs run at once and at most `queueDepth` wait; a job beyond
/// that is refused at once (`.full`), never queued without bound. The async caller is
/// suspended, not a thread: the server's event loops and Swift's cooperative threads stay free
/// for other requests (health checks, metrics, refusals).
final class WorkerPool: @unchecked Sendable {
    private final class Ticket: @unchecked Sendable {
        // The job and its answer, held only while the ticket waits or runs: the ticket is owned by
        // the queue, then by the worker running it, and freed after (the deadline holds it weakly,
        // so an answered request's upload is not kept until its timeout).
        let work: () -> Void                   // runs the job and answers with its result
        let refuse: (PoolRefusal) -> Void      // answers with a refusal instead
        var started = false
        init(work: @escaping () -> Void, refuse: @escaping (PoolRefusal) -> Void) { self.work = work; self.refuse = refuse }
    }

    let workers: Int
    let queueDepth: Int
    private let condition = NSCondition()
    private var queue: [Ticket] = []
    private var running = 0
    private var stopping = false
    private var threads: [Thread] = []
    private var holdNext: (@Sendable () -> Void)?

    /// Tests only: the next job to start first calls `hold` on its worker (counted as running):
    /// a test holds a job "in flight" for as long as it needs, whatever the machine's load.
    func holdNextJob(_ hold: @escaping @Sendable () -> Void) { condition.withLock { holdNext = hold } }

    init(workers: Int, queueDepth: Int) {
        self.workers = workers
        self.queueDepth = queueDepth
        for i in 0..<workers {
            let t = Thread { self.loop() }  // the pool lives until its threads end (after stop())
            t.name = "zeroseg-worker-\(i)"
            t.stackSize = 16 << 20
            threads.append(t)
            t.start()
        }
    }

    /// Jobs waiting, and jobs running.
    var waiting: Int { condition.withLock { queue.count } }
    var busy: Int { condition.withLock { running } }

    private func loop() {
        while true {
            condition.lock()
            while queue.isEmpty && !stopping { condition.wait() }
            if queue.isEmpty && stopping { condition.unlock(); return }
            let t = queue.removeFirst()
            t.started = true
            running += 1
            let hold = holdNext
            holdNext = nil
            condition.unlock()
            hold?()
            t.work()
            condition.withLock { running -= 1 }
        }
    }

    /// Runs `job` on a worker and returns its result; throws `PoolRefusal.full` at once when
    /// the pool is full, `.timedOut` when the result is not there within `timeout` seconds (a
    /// waiting job is then dropped; a running one finishes and its result is dropped), and
    /// `.stopped` after `stop()`.
    func run<T: Sendable>(timeout: Double, _ job: @escaping @Sendable () throws -> T) async throws -> T {
        let once = Once<Result<T, any Error>>()
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            once.onValue = { continuation.resume(with: $0) }
            let ticket = Ticket(work: { once.set(Result { try job() }) }, refuse: { once.set(.failure($0)) })
            let admitted: Result<Void, PoolRefusal> = condition.withLock {
                if stopping { return .failure(.stopped) }
                if running + queue.count >= workers + queueDepth { return .failure(.full) }
                queue.append(ticket)
                condition.signal()
                return .success(())
            }
            if case .failure(let refusal) = admitted { once.set(.failure(refusal)); return }
            let deadline = DispatchTime.now() + timeout
            DispatchQueue.global().asyncAfter(deadline: deadline) { [weak self, weak ticket] in
                guard let ticket else { return }  // done and freed: answered already
                self?.condition.withLock {
                    if !ticket.started, let i = self?.queue.firstIndex(where: { $0 === ticket }) { self?.queue.remove(at: i) }
                }
                ticket.refuse(.timedOut(seconds: timeout))
            }
        }
    }

    /// Stops taking jobs; waiting ones are refused (`.stopped`), running ones finish; the
    /// threads end after them.
    func stop() {
        let dropped: [Ticket] = condition.withLock {
            stopping = true
            let q = queue
            queue.removeAll()
            condition.broadcast()
            return q
        }
        for t in dropped { t.refuse(.stopped) }
    }
}

/// A value set once; the first `set` wins and is handed to `onValue`.
private final class Once<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    var onValue: ((Value) -> Void)?
    func set(_ v: Value) {
        let handler: ((Value) -> Void)? = lock.withLock {
            if done { return nil }
            done = true
            defer { onValue = nil }
            return onValue
        }
        handler?(v)
    }
}
