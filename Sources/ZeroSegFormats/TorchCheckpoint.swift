import Foundation
import ZeroSegCore

/// A PyTorch checkpoint (`pytorch_model.bin`, `open_clip_pytorch_model.bin`, any `torch.save` of a
/// state dict) read safely as named tensors: its pickle is interpreted by a restricted unpickler
/// (Pickle.swift) that never imports or runs anything.
///
/// Formats:
///  * the zip format of torch >= 1.6: `<archive>/data.pkl` plus one stored record per storage,
///    `<archive>/data/<key>`; the file is memory-mapped and contiguous tensors point into it
///    (Zip.swift explains the zip reader). `<archive>/byteorder` must be `little` (or absent);
///  * the legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): magic-number,
///    protocol and sys-info pickles, the main pickle, the list of storage keys, then each storage
///    as an int64 element count and its raw bytes, all in one memory-mapped file.
/// TorchScript archives (`torch.jit.save`), the pre-0.4 tar format and pickled nn.Module objects
/// are refused with a message saying so.
///
/// What the pickle may contain: GLOBAL/STACK_GLOBAL resolve only `collections.OrderedDict`,
/// `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the storage types
/// `torch.{Float,Half,BFloat16,Long,Int}Storage` (what torch 2.x writes for a state dict; checked
/// with pickletools on torch 2.15 files); anything else is refused, naming the global. Persistent
/// ids are `('storage', storage_type, key, location, numel)` (zip) or the same plus
/// `view_metadata = None` (legacy); the location (cpu, cuda:0, ...) is ignored. Tensors may have
/// any shape, strides and storage offset; they are checked against their storage, and tensors
/// may share storages (tied weights).
///
/// Which dict is the state dict: the top-level object must be a dict. If all its values are
/// tensors it is the state dict; otherwise its `state_dict` entry, else its `model` entry, if that
/// is a dict (training checkpoints, whose other entries — epoch, optimizer state, ... — are parsed
/// under the same restrictions and then ignored). The state dict's keys must be strings and its
/// values tensors: any other value is refused with its name. Attributes set on the dict by BUILD
/// (`OrderedDict._metadata`, the module version numbers `nn.Module.state_dict()` attaches) are
/// ignored.
///
/// Memory: a contiguous tensor whose bytes are naturally aligned for its dtype (always so for
/// torch's 64-byte aligned zip records) is used in place, without copying; non-contiguous tensors
/// and misaligned ones (legacy files, archives re-packed by other zip tools) are copied into owned,
/// contiguous buffers. `rawPointer` therefore always gives contiguous, aligned bytes.
/// `TensorInfo.begin..<end` is the byte range of the file the tensor's elements lie in (for a
/// strided tensor, the span from its first to its last element).
public final class TorchCheckpoint: TensorSource, @unchecked Sendable {
    public enum Format: String, Sendable { case zip, legacy }

    public let path: String
    public let tensors: [String: TensorInfo]
    public let format: Format
    /// Tensors that were copied (non-contiguous or misaligned); the others point into the file.
    public let copiedTensors: Set<String>
    let file: MappedFile
    private let pointers: [String: UnsafeRawPointer]
    private let owned: [UnsafeMutableRawPointer]

    /// Non-contiguous tensors with more elements than their storage (stride-0 broadcasts) are
    /// expanded only up to this many bytes.
    static let maxExpandedBytes = 1 << 28

    /// Reads a checkpoint. `verifyChecksums` also checks the CRC-32 of every storage record of a
    /// zip checkpoint (reading the whole file); `data.pkl` and `byteorder` are always checked.
    public convenience init(path: String, verifyChecksums: Bool = false) throws {
        try self.init(file: MappedFile(path: path), path: path, verifyChecksums: verifyChecksums)
    }

    /// The checkpoint in `file` (`path` names it in errors).
    init(file: MappedFile, path: String, verifyChecksums: Bool = false) throws {
        self.path = path
        let name = (path as NSString).lastPathComponent
        self.file = file
        let bytes = UnsafeRawBufferPointer(start: file.base, count: file.size)
        let handler = TorchPickleHandler(name: name)

        // Where each storage's bytes are: (file offset, byte count).
        var storageData: [Int: (offset: Int, size: Int)] = [:]
        let top: PickleValue
        func unpickle(_ buf: UnsafeRawBufferPointer, start: Int, what: String) throws -> (PickleValue, Int) {
            var u = Unpickler(buf, start: start, handler: handler)
            do {
                let v = try u.load()
                return (v, u.pos)
            } catch let e as PickleError {
                throw ZeroSegError("invalid PyTorch checkpoint \(name): \(e.message) (\(what) byte \(e.offset))")
            }
        }

        if file.size >= 4, bytes[0] == 0x50, bytes[1] == 0x4B, [3, 5].contains(bytes[2]) {  // "PK\3\4", "PK\5\6"
            format = .zip
            let zip = try ZipArchive(file: file, what: name)
            guard let first = zip.entries.first, let slash = first.name.firstIndex(of: "/") else {
                throw ZeroSegError("invalid PyTorch checkpoint \(name): the zip archive has no <archive>/data.pkl")
            }
            let prefix = String(first.name[..<slash])
            if zip["\(prefix)/constants.pkl"] != nil || zip.entries.contains(where: { $0.name.hasPrefix("\(prefix)/code/") }) {
                throw ZeroSegError("\(name) is a TorchScript archive (torch.jit.save), not a state dict: "
                    + "save the model's state_dict() with torch.save instead")
            }
            guard let pkl = try zip.stored("\(prefix)/data.pkl", what: name) else {
                throw ZeroSegError("invalid PyTorch checkpoint \(name): the zip archive has no \(prefix)/data.pkl (not a torch.save file?)")
            }
            try zip.checkCRC(pkl, what: name)
            if let bo = try zip.stored("\(prefix)/byteorder", what: name) {
                try zip.checkCRC(bo, what: name)
                let order = String(decoding: zip.bytes(bo), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                guard order == "little" else {
                    throw ZeroSegError("\(name) was saved with byteorder \"\(order.prefix(20))\": only little-endian checkpoints are supported")
                }
            }
            (top, _) = try unpickle(zip.bytes(pkl), start: 0, what: "data.pkl")
            // Storage records: exactly numel × element size bytes, as torch writes them.
            for (i, s) in handler.storages.enumerated() {
                guard let e = try zip.stored("\(prefix)/data/\(s.key)", what: name) else {
                    // Storages only referenced outside the state dict are checked when used below.
                    continue
                }
                if verifyChecksums { try zip.checkCRC(e, what: name) }
                storageData[i] = (e.dataOffset, e.size)
            }
        } else if file.size >= 262, String(decoding: bytes[257..<262], as: UTF8.self) == "ustar" {
            throw ZeroSegError("\(name) uses the legacy tar torch.save format (torch < 0.4), which is not supported: "
                + "re-save it with torch >= 1.6")
        } else if file.size >= 2, bytes[0] == 0x80 {
            format = .legacy
            let notCheckpoint = ZeroSegError("\(name) is not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy format)")
            // 1. magic number 0x1950a86a20f9469cfc6c (LONG1, little-endian bytes)
            var pos: Int
            let magic: PickleValue
            do { (magic, pos) = try unpickle(bytes, start: 0, what: "magic number") } catch { throw notCheckpoint }
            guard case .bigInt(let m) = magic, m == [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19] else {
                throw notCheckpoint
            }
            // 2. protocol version, 3. sys_info
            let proto: PickleValue, sysInfo: PickleValue
            (proto, pos) = try unpickle(bytes, start: pos, what: "protocol version")
            guard proto.asInt == 1001 else {
                throw ZeroSegError("invalid PyTorch checkpoint \(name): legacy format protocol \(proto.asInt.map(String.init) ?? proto.kind), expected 1001")
            }
            (sysInfo, pos) = try unpickle(bytes, start: pos, what: "sys_info")
            guard let info = sysInfo.asDict else { throw ZeroSegError("invalid PyTorch checkpoint \(name): sys_info is not a dict") }
            if let le = info["little_endian"], case .bool(false) = le {
                throw ZeroSegError("\(name) was saved on a big-endian machine: only little-endian checkpoints are supported")
            }
            // 4. the object, 5. the storage keys, 6. the storages
            (top, pos) = try unpickle(bytes, start: pos, what: "pickle")
            let keys: PickleValue
            (keys, pos) = try unpickle(bytes, start: pos, what: "storage key list")
            guard case .list(let keyList) = keys else {
                throw ZeroSegError("invalid PyTorch checkpoint \(name): the storage key list is a \(keys.kind)")
            }
            for k in keyList.items {
                guard let key = k.asString, let i = handler.storageIndex[key] else {
                    throw ZeroSegError("invalid PyTorch checkpoint \(name): storage key \(k.asString ?? k.kind) is not used by the pickle")
                }
                guard storageData[i] == nil else { throw ZeroSegError("invalid PyTorch checkpoint \(name): storage \(key) is listed twice") }
                let s = handler.storages[i]
                guard pos <= file.size - 8 else { throw ZeroSegError("invalid PyTorch checkpoint \(name): file ends inside storage \(key) (truncated)") }
                let n = Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: Int64.self))
                guard n == Int64(s.numel) else {
                    throw ZeroSegError("invalid PyTorch checkpoint \(name): storage \(key) holds \(n) elements, the pickle says \(s.numel)")
                }
                pos += 8
                let size = s.numel * s.dtype.size
                guard size <= file.size - pos else { throw ZeroSegError("invalid PyTorch checkpoint \(name): file ends inside storage \(key) (truncated)") }
                storageData[i] = (pos, size)
                pos += size
            }
        } else {
            throw ZeroSegError("\(name) is not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy format)")
        }

        // The state dict and its tensors.
        let stateDict = try Self.selectStateDict(top, name: name)
        var infos: [String: TensorInfo] = [:]
        var pointers: [String: UnsafeRawPointer] = [:]
        var owned: [UnsafeMutableRawPointer] = []
        var copied = Set<String>()
        var expanded = 0
        do {
            for (k, v) in stateDict.entries {
                guard let key = k.asString else {
                    throw ZeroSegError("refusing to load \(name): the state dict has a \(k.kind) key (names must be strings)")
                }
                guard case .tensor(let ti) = v else {
                    throw ZeroSegError("refusing to load \(name): state dict entry \(key) is a \(v.kind), not a tensor")
                }
                let t = handler.tensors[ti]
                let s = handler.storages[t.storage]
                let es = s.dtype.size
                guard let data = storageData[t.storage] else {
                    throw ZeroSegError("invalid PyTorch checkpoint \(name): tensor \(key) uses storage \(s.key), which is missing from the file")
                }
                guard data.size == s.numel * es else {
                    throw ZeroSegError("invalid PyTorch checkpoint \(name): storage \(s.key) has \(data.size) bytes, "
                        + "\(s.numel) \(s.dtype.rawValue) elements need \(s.numel * es)")
                }
                let count = t.count
                // An empty tensor's storage offset is not bounded by its storage (torch does not
                // check it either): it is not used, and multiplying it could overflow.
                let start = count == 0 ? data.offset : data.offset + t.offset * es
                let begin = count == 0 ? data.offset : start
                let end = count == 0 ? data.offset : start + (t.maxIndex + 1) * es
                infos[key] = TensorInfo(name: key, dtype: s.dtype, shape: t.shape, begin: begin, end: end)
                if count == 0 {
                    pointers[key] = file.base
                } else if t.isContiguous && start % es == 0 {
                    pointers[key] = file.base + start  // in place (the map is page aligned)
                } else {
                    if count > s.numel {
                        expanded += count * es
                        guard expanded <= Self.maxExpandedBytes else {
                            throw ZeroSegError("refusing to load \(name): tensor \(key) has \(count) elements over a storage of \(s.numel) "
                                + "(stride-0 broadcast); expanding it would take more than \(Self.maxExpandedBytes >> 20) MB")
                        }
                    }
                    let dst = UnsafeMutableRawPointer.allocate(byteCount: count * es, alignment: 64)
                    owned.append(dst)
                    Self.gather(from: file.base + start, to: dst, shape: t.shape, strides: t.strides, elementSize: es)
                    pointers[key] = UnsafeRawPointer(dst)
                    copied.insert(key)
                }
            }
        } catch {
            owned.forEach { $0.deallocate() }
            throw error
        }
        tensors = infos
        self.pointers = pointers
        self.owned = owned
        copiedTensors = copied
    }

    deinit { owned.forEach { $0.deallocate() } }

    public func rawPointer(_ info: TensorInfo) -> UnsafeRawPointer {
        guard let p = pointers[info.name] else { preconditionFailure("\(info.name) is not a tensor of \(path)") }
        return p
    }

    /// The state dict inside the unpickled object (rules in the type's documentation).
    static func selectStateDict(_ top: PickleValue, name: String) throws -> PickleDict {
        guard let d = top.asDict else {
            throw ZeroSegError("refusing to load \(name): the checkpoint holds a \(top.kind), not a dict of tensors")
        }
        func isTensor(_ v: PickleValue) -> Bool { if case .tensor = v { true } else { false } }
        if d.entries.allSatisfy({ isTensor($0.value) }) { return d }
        for k in ["state_dict", "model"] {
            if let sd = d[k]?.asDict { return sd }
        }
        let bad = d.entries.first { !isTensor($0.value) }!
        let key = bad.key.asString ?? bad.key.kind
        throw ZeroSegError("refusing to load \(name): entry \(key) is a \(bad.value.kind), not a tensor "
            + "(expected a state dict of tensors, or a dict with a state_dict or model entry holding one)")
    }

    /// Copies a strided tensor into contiguous row-major order.
    static func gather(from src: UnsafeRawPointer, to dst: UnsafeMutableRawPointer, shape: [Int], strides: [Int], elementSize es: Int) {
        let nd = shape.count
        guard nd > 0 else { memcpy(dst, src, es); return }
        let inner = shape[nd - 1], innerStride = strides[nd - 1] * es
        let outer = shape.dropLast().reduce(1, *)
        var idx = [Int](repeating: 0, count: nd - 1)
        var out = dst
        for _ in 0..<outer {
            var off = 0
            for d in 0..<(nd - 1) { off += idx[d] * strides[d] }
            var p = src + off * es
            switch es {
            case 2:
                for _ in 0..<inner { out.storeBytes(of: p.loadUnaligned(as: UInt16.self), as: UInt16.self); out += 2; p += innerStride }
            case 4:
                for _ in 0..<inner { out.storeBytes(of: p.loadUnaligned(as: UInt32.self), as: UInt32.self); out += 4; p += innerStride }
            default:
                for _ in 0..<inner { memcpy(out, p, es); out += es; p += innerStride }
            }
            var d = nd - 2
            while d >= 0 {
                idx[d] += 1
                if idx[d] < shape[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
    }
}

/// Interprets the globals, persistent ids and calls of a torch.save pickle (see TorchCheckpoint).
final class TorchPickleHandler: PickleHandler {
    struct Storage {
        let key: String
        let dtype: DType
        let numel: Int
    }
    struct Tensor {
        let storage: Int
        let offset: Int
        let shape: [Int]
        let strides: [Int]
        let count: Int
        /// Storage index of the last element, relative to `offset`.
        let maxIndex: Int
        var isContiguous: Bool {
            var expected = 1
            for d in (0..<shape.count).reversed() {
                if shape[d] != 1 && strides[d] != expected { return false }
                expected *= shape[d]
            }
            return true
        }
    }

    let name: String
    private(set) var storages: [Storage] = []
    private(set) var storageIndex: [String: Int] = [:]
    private(set) var tensors: [Tensor] = []

    static let storageTypes: [String: DType] = [
        "torch.FloatStorage": .f32, "torch.HalfStorage": .f16, "torch.BFloat16Storage": .bf16,
        "torch.LongStorage": .i64, "torch.IntStorage": .i32,
    ]
    static let functions: Set<String> = [
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    ]

    init(name: String) { self.name = name }

    private func refuse(_ why: String) -> ZeroSegError { ZeroSegError("refusing to load \(name): \(why)") }
    private func invalid(_ why: String) -> ZeroSegError { ZeroSegError("invalid PyTorch checkpoint \(name): \(why)") }

    /// A global's name made safe to print.
    private static func printable(_ s: String) -> String {
        let clean = String(s.unicodeScalars.map { $0.value >= 0x20 && $0.value < 0x7F ? Character($0) : "?" })
        return clean.count > 80 ? clean.prefix(80) + "..." : clean
    }

    func resolveGlobal(module: String, name global: String) throws -> PickleValue {
        let full = "\(module).\(global)"
        if Self.functions.contains(full) || Self.storageTypes[full] != nil { return .global(full) }
        let shown = Self.printable(full)
        if module == "torch" && global.hasSuffix("Storage") {
            throw refuse("pickle asks for \(shown) (only tensors of dtype float32, float16, bfloat16, int64 and int32 are supported)")
        }
        throw refuse("pickle asks for \(shown) (only state-dict tensors are allowed)")
    }

    func reduce(_ callable: PickleValue, _ args: [PickleValue]) throws -> PickleValue {
        guard case .global(let f) = callable else { throw invalid("pickle calls a \(callable.kind)") }
        switch f {
        case "collections.OrderedDict":
            guard args.isEmpty else { throw refuse("pickle builds an OrderedDict from arguments (only empty ones are allowed)") }
            return .dict(PickleDict())
        case "torch._utils._rebuild_tensor_v2":
            return try rebuildTensor(args)
        case "torch._utils._rebuild_parameter":
            guard args.count == 3, case .tensor = args[0], case .bool = args[1] else {
                throw invalid("_rebuild_parameter has bad arguments")
            }
            try checkNoHooks(args[2])
            return args[0]
        default:
            throw refuse("pickle calls \(f) (only state-dict tensors are allowed)")
        }
    }

    func build(_ obj: PickleValue, state: PickleValue) throws -> PickleValue {
        // OrderedDict attributes (state_dict()._metadata: module version numbers): ignored.
        guard case .dict = obj else { throw refuse("pickle sets the state of a \(obj.kind) (only state-dict tensors are allowed)") }
        return obj
    }

    func persistentLoad(_ pid: PickleValue) throws -> PickleValue {
        guard let t = pid.asTuple, let kind = t.first?.asString else { throw invalid("persistent id is a \(pid.kind), not a tuple") }
        if kind == "module" {
            throw refuse("it is a pickled nn.Module (torch.save(model)), not a state dict: save model.state_dict() instead")
        }
        guard kind == "storage" else { throw refuse("persistent id of kind \(TorchPickleHandler.printable(kind)) (only storages are allowed)") }
        // zip: ('storage', type, key, location, numel); legacy: the same plus view_metadata (None).
        guard t.count == 5 || t.count == 6 else { throw invalid("storage persistent id has \(t.count) fields") }
        guard case .global(let type) = t[1], let dtype = Self.storageTypes[type] else {
            throw invalid("storage persistent id has type \(t[1].kind)")
        }
        guard let key = t[2].asString, t[3].asString != nil, let numel = t[4].asInt, numel >= 0 else {
            throw invalid("storage persistent id has a bad key, location or size")
        }
        let (bytes, overflow) = numel.multipliedReportingOverflow(by: dtype.size)
        guard !overflow, bytes <= Int.max / 2 else { throw invalid("storage \(key) of \(numel) elements is absurdly large") }
        if t.count == 6, case .none = t[5] {} else if t.count == 6 {
            throw refuse("storage \(key) is a view of another storage (legacy storage views are not supported)")
        }
        if let i = storageIndex[key] {
            guard storages[i].dtype == dtype, storages[i].numel == numel else {
                throw invalid("storage \(key) is used with different types or sizes")
            }
            return .storage(i)
        }
        storageIndex[key] = storages.count
        storages.append(Storage(key: key, dtype: dtype, numel: numel))
        return .storage(storages.count - 1)
    }

    private func checkNoHooks(_ v: PickleValue) throws {
        guard let d = v.asDict else { throw invalid("tensor backward hooks are a \(v.kind), not a dict") }
        guard d.count == 0 else { throw refuse("a tensor carries backward hooks (only plain tensors are allowed)") }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`
    private func rebuildTensor(_ a: [PickleValue]) throws -> PickleValue {
        guard a.count == 6 || a.count == 7 else { throw invalid("_rebuild_tensor_v2 has \(a.count) arguments") }
        guard case .storage(let si) = a[0] else { throw invalid("_rebuild_tensor_v2 is given a \(a[0].kind), not a storage") }
        let s = storages[si]
        guard let offset = a[1].asInt, offset >= 0 else { throw invalid("tensor has a bad storage offset") }
        guard let sizeT = a[2].asTuple, let strideT = a[3].asTuple, sizeT.count == strideT.count, sizeT.count <= 64 else {
            throw invalid("tensor has a bad size or stride")
        }
        var shape: [Int] = [], strides: [Int] = []
        for (x, y) in zip(sizeT, strideT) {
            guard let n = x.asInt, n >= 0, let st = y.asInt, st >= 0 else { throw invalid("tensor has a bad size or stride") }
            shape.append(n)
            strides.append(st)
        }
        guard case .bool = a[4] else { throw invalid("tensor requires_grad is a \(a[4].kind)") }
        try checkNoHooks(a[5])
        if a.count == 7 {
            guard let meta = a[6].asDict else { throw invalid("tensor metadata is a \(a[6].kind)") }
            for (k, v) in meta.entries {
                guard case .bool(false) = v else {
                    throw refuse("a tensor has metadata \(TorchPickleHandler.printable(k.asString ?? k.kind)) (conjugate/negative views are not supported)")
                }
            }
        }
        // Element count and the last element's storage index, overflow-checked.
        var count = 1, span = 0
        for (n, st) in zip(shape, strides) {
            let (c, o1) = count.multipliedReportingOverflow(by: n)
            guard !o1 else { throw invalid("tensor shape \(shape) overflows") }
            count = c
            if n > 0 {
                let (m, o2) = (n - 1).multipliedReportingOverflow(by: st)
                let (sp, o3) = span.addingReportingOverflow(m)
                guard !o2, !o3 else { throw invalid("tensor strides \(strides) overflow") }
                span = sp
            }
        }
        let (bytes, o4) = count.multipliedReportingOverflow(by: s.dtype.size)
        guard !o4, bytes <= Int.max / 2 else { throw invalid("tensor shape \(shape) is absurdly large") }
        if count > 0 {
            let (last, o5) = offset.addingReportingOverflow(span)
            guard !o5, last < s.numel else {
                throw invalid("tensor of shape \(shape), strides \(strides) at storage offset \(offset) "
                    + "reaches element \(o5 ? "beyond Int.max" : String(last)) of storage \(s.key), which has \(s.numel) elements")
            }
        }
        tensors.append(Tensor(storage: si, offset: offset, shape: shape, strides: strides, count: count, maxIndex: span))
        return .tensor(tensors.count - 1)
    }
}
