import Foundation
import Testing
import ZeroSeg

/// The Swift generator must equal scripts/reference/synth.py bit for bit: the fixture records the
/// first values the Python generator drew for two tensors.
@Test func synthMatchesPythonProbe() throws {
    let url = Bundle.module.url(forResource: "stages", withExtension: "safetensors", subdirectory: "Fixtures/tiny")!
    let f = try SafetensorsFile(path: url.path)
    let probe = try JSONSerialization.jsonObject(with: Data(f.metadata["probe"]!.utf8)) as! [String: Any]
    let tensors = probe["tensors"] as! [String: [String: Any]]
    #expect(tensors.count == 2)
    for (name, t) in tensors {
        let a = Double(t["amplitude"] as! String)!, c = Double(t["offset"] as! String)!
        let hex = (t["hex"] as! [String]).map { UInt32($0.dropFirst(2), radix: 16)! }
        let ours = Synth.values(name: name, seed: 0, count: hex.count, amplitude: a, offset: c).map(\.bitPattern)
        #expect(ours == hex, "synth values for \(name) differ from scripts/reference/synth.py")
    }
}
