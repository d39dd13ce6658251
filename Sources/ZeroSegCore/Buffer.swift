/// An owned, uninitialised Float buffer (64-byte aligned), freed with its owner.
public final class Buffer: @unchecked Sendable {
    public let count: Int
    public let ptr: UnsafeMutablePointer<Float>

    public init(_ count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        ptr = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    public convenience init(zeros count: Int) {
        self.init(count)
        ptr.initialize(repeating: 0, count: count)
    }

    public convenience init(_ values: [Float]) {
        self.init(values.count)
        values.withUnsafeBufferPointer { ptr.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { UnsafeMutableRawPointer(ptr).deallocate() }

    public var array: [Float] { Array(UnsafeBufferPointer(start: ptr, count: count)) }
    public subscript(i: Int) -> Float {
        get { ptr[i] }
        set { ptr[i] = newValue }
    }
}
