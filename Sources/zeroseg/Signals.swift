import Foundation
import ZeroSeg

/// Ends the command at once on a signal, as SIGINT's default action would, but first removes the
/// temporary files of the atomic writes in progress (their targets stay as they were) and says
/// so in one line. `_exit`: other threads are still running, no atexit handler may run.
func exitAtOnce(on sig: Int32, _ message: String) -> Never {
    AtomicWrites.abandonAll()
    printErr("\r\u{1B}[Kerror: \(message)")
    _exit(128 + sig)
}
