import Foundation
import ZeroSegCore

// A restricted unpickler: it builds plain values from a pickle and NEVER imports or calls
// anything. The opcodes that could reach Python objects (GLOBAL, STACK_GLOBAL, REDUCE, BUILD,
// BINPERSID) are all routed to a `PickleHandler`, which decides what an allowed global means;
// every other object-creating opcode (INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1/2/4, PERSID, the
// protocol-5 out-of-band buffers) and all protocol-0 text opcodes are refused.
//
// Resource rules, so a hostile pickle cannot exhaust memory or the call stack:
//  * every length is checked against the bytes left, so all allocations are bounded by the input;
//  * containers nest at most `PickleValue.maxDepth` deep;
//  * a list or dict cannot be modified once it is inside another container: this is how pickle
//    writes everything except self-referencing (cyclic) structures, which are thereby refused, so
//    values are finite trees (possibly sharing subtrees) and their nesting depth is exact.
// Reference: CPython Lib/pickle.py and Lib/pickletools.py (opcode meanings and argument formats).

/// A value built by the unpickler.
enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    /// An integer beyond 64 bits (LONG1/LONG4): two's-complement little-endian bytes.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple(PickleTuple)
    case list(PickleList)
    case dict(PickleDict)
    /// An allow-listed global, as "module.name" (resolved by the handler; never imported).
    case global(String)
    /// Handler-defined objects (storages and tensors for torch checkpoints): an index.
    case storage(Int)
    case tensor(Int)

    static let maxDepth = 100

    var depth: Int {
        switch self {
        case .tuple(let t): t.depth
        case .list(let l): l.depth
        case .dict(let d): d.depth
        default: 0
        }
    }

    /// A short description of the kind of value, for error messages.
    var kind: String {
        switch self {
        case .none: "None"
        case .bool: "bool"
        case .int, .bigInt: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .tuple: "tuple"
        case .list: "list"
        case .dict: "dict"
        case .global(let g): g
        case .storage: "storage"
        case .tensor: "tensor"
        }
    }

    var asString: String? { if case .string(let s) = self { s } else { nil } }
    var asInt: Int? { if case .int(let i) = self { i } else { nil } }
    var asTuple: [PickleValue]? { if case .tuple(let t) = self { t.items } else { nil } }
    var asDict: PickleDict? { if case .dict(let d) = self { d } else { nil } }
}

final class PickleTuple {
    let items: [PickleValue]
    let depth: Int
    init(_ items: [PickleValue]) {
        self.items = items
        depth = 1 + (items.map(\.depth).max() ?? 0)
    }
}

final class PickleList {
    private(set) var items: [PickleValue] = []
    private(set) var depth = 1
    /// Set once the list is inside another container (it can then no longer change).
    var sealed = false
    func append(_ v: PickleValue) {
        items.append(v)
        depth = max(depth, 1 + v.depth)
    }
}

/// A dict (or OrderedDict), insertion-ordered; keys must be hashable scalars.
final class PickleDict {
    enum Key: Hashable { case string(String), int(Int), bigInt([UInt8]), bool(Bool), none, float(UInt64), bytes([UInt8]) }
    private(set) var entries: [(key: PickleValue, value: PickleValue)] = []
    private var index: [Key: Int] = [:]
    private(set) var depth = 1
    var sealed = false

    static func key(_ v: PickleValue) -> Key? {
        switch v {
        case .string(let s): .string(s)
        // Python: 1 == True and hash(1.0) == hash(1); bools and integral floats collide with ints.
        case .int(let i): .int(i)
        case .bool(let b): .int(b ? 1 : 0)
        case .float(let d): (d == d.rounded() && abs(d) < 9e18) ? .int(Int(d)) : .float(d.bitPattern)
        case .bigInt(let b): .bigInt(b)
        case .none: Key.none
        case .bytes(let b): .bytes(b)
        default: nil
        }
    }

    func set(_ k: Key, _ key: PickleValue, _ value: PickleValue) {
        if let i = index[k] { entries[i].value = value } else {
            index[k] = entries.count
            entries.append((key, value))
        }
        depth = max(depth, 1 + value.depth)
    }

    subscript(_ name: String) -> PickleValue? { index[.string(name)].map { entries[$0].value } }
    var count: Int { entries.count }
}

/// What the restricted unpickler asks about globals and objects.
protocol PickleHandler: AnyObject {
    /// GLOBAL / STACK_GLOBAL: return `.global(...)` for an allowed name, or throw.
    func resolveGlobal(module: String, name: String) throws -> PickleValue
    /// REDUCE: `callable(*args)` where callable is a resolved global.
    func reduce(_ callable: PickleValue, _ args: [PickleValue]) throws -> PickleValue
    /// BUILD: `obj.__setstate__(state)`; returns the object that stays on the stack.
    func build(_ obj: PickleValue, state: PickleValue) throws -> PickleValue
    /// BINPERSID: the persistent object with this id.
    func persistentLoad(_ pid: PickleValue) throws -> PickleValue
}

/// An error inside a pickle, with the byte offset of the opcode.
struct PickleError: Error {
    let message: String
    let offset: Int
}

/// Unpickles one pickle (up to its STOP) from `bytes`, starting at `start`.
struct Unpickler {
    let bytes: UnsafeRawBufferPointer
    private(set) var pos: Int
    unowned let handler: any PickleHandler
    private var stack: [PickleValue] = []
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    private var opStart = 0

    init(_ bytes: UnsafeRawBufferPointer, start: Int = 0, handler: any PickleHandler) {
        self.bytes = bytes
        pos = start
        self.handler = handler
    }

    private func fail(_ why: String) -> PickleError { PickleError(message: why, offset: opStart) }

    // MARK: reading arguments

    private mutating func take(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= bytes.count - pos else { throw fail("pickle data ends early (truncated)") }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: bytes[pos..<(pos + n)])
    }
    private mutating func u8() throws -> Int { Int(try take(1)[0]) }
    private mutating func u16() throws -> Int { let b = try take(2); return Int(b[0]) | Int(b[1]) << 8 }
    private mutating func u32() throws -> Int { Int(UInt32(littleEndian: try take(4).loadUnaligned(as: UInt32.self))) }
    private mutating func i32() throws -> Int { Int(Int32(littleEndian: try take(4).loadUnaligned(as: Int32.self))) }
    private mutating func u64() throws -> Int {
        let v = UInt64(littleEndian: try take(8).loadUnaligned(as: UInt64.self))
        guard v <= UInt64(Int.max) else { throw fail("pickle length \(v) is absurd") }
        return Int(v)
    }
    private mutating func line() throws -> String {
        guard let nl = bytes[pos...].firstIndex(of: 0x0A) else { throw fail("pickle data ends early (unterminated line)") }
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[pos..<nl]), as: UTF8.self)
        pos = nl + 1
        return s
    }
    private mutating func utf8(_ n: Int) throws -> String {
        let b = try take(n)
        guard let s = String(validating: b, as: UTF8.self) else { throw fail("pickle string is not valid UTF-8") }
        return s
    }
    /// LONG1/LONG4: little-endian two's complement of n bytes.
    private mutating func long(_ n: Int) throws -> PickleValue {
        let b = try take(n)
        if n == 0 { return .int(0) }
        let negative = b[n - 1] & 0x80 != 0
        // Fits in Int when every byte past the 8th is pure sign extension of the 8th's top bit.
        let fill: UInt8 = negative ? 0xFF : 0
        let fits = n <= 8 || (b[8...].allSatisfy { $0 == fill } && (b[7] & 0x80 != 0) == negative)
        guard fits else { return .bigInt(Array(b)) }
        var v: UInt64 = negative ? ~0 : 0
        for i in (0..<min(n, 8)).reversed() { v = v << 8 | UInt64(b[i]) }
        if n < 8 && negative { v |= ~0 << (8 * UInt64(n)) }
        return .int(Int(Int64(bitPattern: v)))
    }

    // MARK: the stack

    private mutating func push(_ v: PickleValue) { stack.append(v) }
    private mutating func pop() throws -> PickleValue {
        guard stack.count > (marks.last ?? 0) else { throw fail("pickle stack underflow") }
        return stack.removeLast()
    }
    private func top() throws -> PickleValue {
        guard stack.count > (marks.last ?? 0), let v = stack.last else { throw fail("pickle stack underflow") }
        return v
    }
    private mutating func popMark() throws -> [PickleValue] {
        guard let m = marks.popLast() else { throw fail("pickle has no MARK for a mark-terminated opcode") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }
    /// Seals a list/dict that is being put inside another container (see the rules above).
    private func seal(_ v: PickleValue) {
        if case .list(let l) = v { l.sealed = true }
        if case .dict(let d) = v { d.sealed = true }
    }
    private func checkDepth(_ d: Int) throws {
        guard d <= PickleValue.maxDepth else { throw fail("pickle nests containers more than \(PickleValue.maxDepth) deep") }
    }
    private func tuple(_ items: [PickleValue]) throws -> PickleValue {
        items.forEach(seal)
        let t = PickleTuple(items)
        try checkDepth(t.depth)
        return .tuple(t)
    }
    private func appendItems(_ items: [PickleValue], to target: PickleValue) throws {
        guard case .list(let l) = target else { throw fail("pickle appends to a \(target.kind), not a list") }
        items.forEach(seal)  // first, so that appending a list to itself is caught
        guard !l.sealed else { throw fail("pickle modifies a list after nesting it (cyclic structures are not allowed)") }
        for v in items {
            try checkDepth(1 + v.depth)
            l.append(v)
        }
    }
    private func setItems(_ items: [PickleValue], in target: PickleValue) throws {
        guard case .dict(let d) = target else { throw fail("pickle sets items on a \(target.kind), not a dict") }
        items.forEach(seal)  // first, so that putting a dict into itself is caught
        guard !d.sealed else { throw fail("pickle modifies a dict after nesting it (cyclic structures are not allowed)") }
        guard items.count % 2 == 0 else { throw fail("pickle SETITEMS has an odd number of items") }
        for i in stride(from: 0, to: items.count, by: 2) {
            guard let k = PickleDict.key(items[i]) else { throw fail("pickle uses a \(items[i].kind) as a dict key") }
            try checkDepth(1 + items[i + 1].depth)
            d.set(k, items[i], items[i + 1])
        }
    }

    // MARK: opcodes

    /// Runs until STOP; returns the pickled value. `pos` is then just past the STOP opcode.
    mutating func load() throws -> PickleValue {
        while true {
            opStart = pos
            let op = UInt8(try u8())
            switch op {
            case 0x80:  // PROTO
                let p = try u8()
                guard p >= 2, p <= 5 else { throw fail("unsupported pickle protocol \(p) (2 to 5 are read)") }
            case 0x95:  // FRAME: a length hint only
                let n = try u64()
                guard n <= bytes.count - pos else { throw fail("pickle frame of \(n) bytes runs past the end (truncated)") }
            case 0x2E:  // STOP
                let v = try pop()
                guard stack.isEmpty, marks.isEmpty else { throw fail("pickle stops with items left on the stack") }
                return v
            case 0x28: marks.append(stack.count)  // MARK
            case 0x7D: push(.dict(PickleDict()))  // EMPTY_DICT
            case 0x5D: push(.list(PickleList()))  // EMPTY_LIST
            case 0x29: push(.tuple(PickleTuple([])))  // EMPTY_TUPLE
            case 0x4E: push(.none)  // NONE
            case 0x88: push(.bool(true))  // NEWTRUE
            case 0x89: push(.bool(false))  // NEWFALSE
            case 0x4B: push(.int(try u8()))  // BININT1
            case 0x4D: push(.int(try u16()))  // BININT2
            case 0x4A: push(.int(try i32()))  // BININT
            case 0x8A: push(try long(try u8()))  // LONG1
            case 0x8B:  // LONG4
                let n = try i32()
                guard n >= 0 else { throw fail("negative LONG4 length") }
                push(try long(n))
            case 0x47:  // BINFLOAT (big-endian)
                push(.float(Double(bitPattern: UInt64(bigEndian: try take(8).loadUnaligned(as: UInt64.self)))))
            case 0x58: push(.string(try utf8(try u32())))  // BINUNICODE
            case 0x8C: push(.string(try utf8(try u8())))  // SHORT_BINUNICODE
            case 0x8D: push(.string(try utf8(try u64())))  // BINUNICODE8
            case 0x55: push(.string(try utf8(try u8())))  // SHORT_BINSTRING (Python 2 str; torch.load decodes UTF-8)
            case 0x54:  // BINSTRING
                let n = try i32()
                guard n >= 0 else { throw fail("negative BINSTRING length") }
                push(.string(try utf8(n)))
            case 0x43: push(.bytes(Array(try take(try u8()))))  // SHORT_BINBYTES
            case 0x42: push(.bytes(Array(try take(try u32()))))  // BINBYTES
            case 0x8E: push(.bytes(Array(try take(try u64()))))  // BINBYTES8
            case 0x74: push(try tuple(try popMark()))  // TUPLE
            case 0x85: push(try tuple([try pop()]))  // TUPLE1
            case 0x86:  // TUPLE2
                let b = try pop(), a = try pop()
                push(try tuple([a, b]))
            case 0x87:  // TUPLE3
                let c = try pop(), b = try pop(), a = try pop()
                push(try tuple([a, b, c]))
            case 0x6C:  // LIST
                let l = PickleList()
                try appendItems(try popMark(), to: .list(l))
                push(.list(l))
            case 0x64:  // DICT
                let d = PickleDict()
                try setItems(try popMark(), in: .dict(d))
                push(.dict(d))
            case 0x61:  // APPEND
                let v = try pop()
                try appendItems([v], to: try top())
            case 0x65:  // APPENDS
                let items = try popMark()
                try appendItems(items, to: try top())
            case 0x73:  // SETITEM
                let v = try pop(), k = try pop()
                try setItems([k, v], in: try top())
            case 0x75:  // SETITEMS
                let items = try popMark()
                try setItems(items, in: try top())
            case 0x30: _ = try pop()  // POP
            case 0x31: _ = try popMark()  // POP_MARK
            case 0x32: push(try top())  // DUP
            case 0x71: memo[try u8()] = try top()  // BINPUT
            case 0x72: memo[try u32()] = try top()  // LONG_BINPUT
            case 0x94: memo[memo.count] = try top()  // MEMOIZE
            case 0x68, 0x6A:  // BINGET, LONG_BINGET
                let i = op == 0x68 ? try u8() : try u32()
                guard let v = memo[i] else { throw fail("pickle refers to memo entry \(i), which does not exist") }
                push(v)
            case 0x63:  // GLOBAL
                let module = try line(), name = try line()
                push(try handler.resolveGlobal(module: module, name: name))
            case 0x93:  // STACK_GLOBAL
                let name = try pop(), module = try pop()
                guard let m = module.asString, let n = name.asString else { throw fail("STACK_GLOBAL of non-strings") }
                push(try handler.resolveGlobal(module: m, name: n))
            case 0x52:  // REDUCE
                let args = try pop(), callable = try pop()
                guard let a = args.asTuple else { throw fail("REDUCE arguments are a \(args.kind), not a tuple") }
                push(try handler.reduce(callable, a))
            case 0x62:  // BUILD
                let state = try pop(), obj = try pop()
                seal(state)
                push(try handler.build(obj, state: state))
            case 0x51:  // BINPERSID
                push(try handler.persistentLoad(try pop()))
            default:
                throw fail("pickle opcode \(Self.describe(op)) is not allowed in a state dict")
            }
        }
    }

    static func describe(_ op: UInt8) -> String {
        let names: [UInt8: String] = [
            0x69: "INST", 0x6F: "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
            0x50: "PERSID", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS",
            0x91: "FROZENSET", 0x49: "INT", 0x4C: "LONG", 0x53: "STRING", 0x56: "UNICODE", 0x46: "FLOAT",
            0x67: "GET", 0x70: "PUT",
        ]
        let hex = "0x" + String(op, radix: 16, uppercase: true)
        return names[op].map { "\($0) (\(hex))" } ?? hex
    }
}
