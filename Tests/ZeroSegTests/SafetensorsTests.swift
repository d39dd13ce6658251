import Foundation
import Testing
import ZeroSeg

@Suite struct SafetensorsTests {
    /// A safetensors file from a raw header string and a data section.
    func file(header: String, data: [UInt8] = [], lengthOverride: UInt64? = nil) -> String {
        var bytes: [UInt8] = []
        let h = Array(header.utf8)
        var n = lengthOverride ?? UInt64(h.count)
        withUnsafeBytes(of: &n) { bytes += $0 }
        bytes += h + data
        let url = temporaryDirectory().appendingPathComponent("t.safetensors")
        _ = FileManager.default.createFile(atPath: url.path, contents: Data(bytes))
        return url.path
    }

    func error(_ path: String) -> String {
        do { _ = try SafetensorsFile(path: path); return "" } catch { return "\(error)" }
    }

    @Test func roundTripAndDtypes() throws {
        let url = temporaryDirectory().appendingPathComponent("a.safetensors")
        try SafetensorsFile.write([("x", [2, 3], [1, 2, 3, 4, 5, 6]), ("s", [], [7])], metadata: ["k": "v"], to: url)
        let f = try SafetensorsFile(path: url.path)
        #expect(try f.floats("x") == [1, 2, 3, 4, 5, 6])
        #expect(f.tensors["x"]?.shape == [2, 3])
        #expect(try f.floats("s") == [7])
        #expect(f.metadata["k"] == "v")
        // F16 1.5 = 0x3E00, BF16 -2 = 0xC000, I64 5
        let p = file(header: #"{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[2,4]},"i":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}}"#,
                     data: [0x00, 0x3E, 0x00, 0xC0, 5, 0, 0, 0, 0, 0, 0, 0])
        let g = try SafetensorsFile(path: p)
        #expect(try g.floats("h") == [1.5])
        #expect(try g.floats("b") == [-2])
        #expect(try g.ints("i") == [5])
    }

    @Test func rejectsBadHeaders() {
        #expect(error(file(header: "{}", lengthOverride: 1 << 40)).contains("not sane"))
        #expect(error(file(header: "{}", lengthOverride: 1000)).contains("past the end"))
        #expect(error(file(header: "[1,2]")).contains("not a JSON object"))
        #expect(error(file(header: "{not json")).contains("not a JSON object"))
        #expect(error(file(header: #"{"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8))).contains("unsupported dtype F64"))
        #expect(error(file(header: #"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])).contains("needs 8 bytes"))
        #expect(error(file(header: #"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0])).contains("outside the data section"))
        #expect(error(file(header: #"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: Array(repeating: 0, count: 8))).contains("overlap"))
        #expect(error(file(header: #"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])).contains("bad shape"))
        #expect(error(file(header: #"{"__metadata__":{"a":1}}"#)).contains("not a string"))
        let short = temporaryDirectory().appendingPathComponent("short.safetensors")
        _ = FileManager.default.createFile(atPath: short.path, contents: Data([1, 2, 3]))
        #expect(error(short.path).contains("shorter than"))
        #expect(error("/nonexistent/model.safetensors").contains("cannot open"))
    }
}
