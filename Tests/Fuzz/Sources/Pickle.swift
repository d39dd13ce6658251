@testable import ZeroSegFormats

/// The restricted unpickler with the torch handler (allowed globals, REDUCE/BUILD of tensors,
/// persistent ids): up to 6 pickles one after another, as the legacy torch format stores them, and
/// the state-dict selection on each value.
let pickleTarget = FuzzTarget(name: "pickle", covers: "Unpickler + TorchPickleHandler: opcodes, limits, globals, tensors, state-dict selection") { bytes in
    let handler = TorchPickleHandler(name: "fuzz.pkl")
    var pos = 0
    for _ in 0..<6 where pos < bytes.count {
        var u = Unpickler(bytes, start: pos, handler: handler)
        do {
            let v = try u.load()
            _ = v.kind
            _ = try? TorchCheckpoint.selectStateDict(v, name: "fuzz.pkl")
        } catch {
            expectTyped(error) { $0 is PickleError }
            return
        }
        guard u.pos > pos else { return }
        pos = u.pos
    }
}
