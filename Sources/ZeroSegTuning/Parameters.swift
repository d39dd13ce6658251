import Foundation
import ZeroSegCore

// Named learnable tensors: what a head, the visual prompts and the CoOp context hand to the
// optimiser and to the prompt file. Order matters (the flat vector of the optimiser's moments
// follows it) and is the order of insertion.

/// One learnable tensor: a name (as in the prompt file), a shape and row-major values.
public struct NamedTensor: Sendable, Equatable {
    public var name: String
    public var shape: [Int]
    public var data: [Float]
    public init(_ name: String, _ shape: [Int], _ data: [Float]) {
        precondition(data.count == shape.reduce(1, *), "NamedTensor \(name): \(data.count) values for shape \(shape)")
        self.name = name; self.shape = shape; self.data = data
    }
    /// Zeros of this tensor's shape (a gradient's starting value).
    public var zeros: NamedTensor { NamedTensor(name, shape, [Float](repeating: 0, count: data.count)) }
}

/// An ordered list of named tensors with lookup by name.
public struct NamedTensors: Sendable, Equatable {
    public private(set) var tensors: [NamedTensor] = []
    private var index: [String: Int] = [:]

    public init(_ tensors: [NamedTensor] = []) { for t in tensors { append(t) } }

    public mutating func append(_ t: NamedTensor) {
        precondition(index[t.name] == nil, "NamedTensors: \(t.name) twice")
        index[t.name] = tensors.count
        tensors.append(t)
    }
    public mutating func append(contentsOf other: NamedTensors) { for t in other.tensors { append(t) } }

    public var names: [String] { tensors.map(\.name) }
    public var count: Int { tensors.reduce(0) { $0 + $1.data.count } }
    public func contains(_ name: String) -> Bool { index[name] != nil }

    public subscript(name: String) -> [Float] {
        get { tensors[index[name]!].data }
        set {
            let i = index[name]!
            precondition(newValue.count == tensors[i].data.count, "NamedTensors: \(name) has \(tensors[i].data.count) values, got \(newValue.count)")
            tensors[i].data = newValue
        }
    }
    public func shape(_ name: String) -> [Int]? { index[name].map { tensors[$0].shape } }

    /// Zeros of the same names and shapes.
    public var zeros: NamedTensors { NamedTensors(tensors.map(\.zeros)) }

    /// All values, tensor after tensor.
    public var flat: [Float] { tensors.flatMap(\.data) }
    public mutating func setFlat(_ v: [Float]) {
        precondition(v.count == count)
        var o = 0
        for i in tensors.indices { let n = tensors[i].data.count; tensors[i].data = Array(v[o..<(o + n)]); o += n }
    }
    /// The flat ranges of the tensors whose names satisfy `where`.
    public func ranges(where keep: (String) -> Bool) -> [Range<Int>] {
        var o = 0, out: [Range<Int>] = []
        for t in tensors { if keep(t.name) { out.append(o..<(o + t.data.count)) }; o += t.data.count }
        return out
    }
    /// Same names and shapes as `other`.
    public func sameLayout(as other: NamedTensors) -> Bool {
        tensors.count == other.tensors.count && zip(tensors, other.tensors).allSatisfy { $0.name == $1.name && $0.shape == $1.shape }
    }
    /// Adds `other` (same layout) into self.
    public mutating func add(_ other: NamedTensors) {
        precondition(sameLayout(as: other))
        for i in tensors.indices { for j in tensors[i].data.indices { tensors[i].data[j] += other.tensors[i].data[j] } }
    }
    public var allFinite: Bool { tensors.allSatisfy { $0.data.allSatisfy(\.isFinite) } }
}

/// AdamW (decoupled weight decay, bias-corrected moments, torch.optim.AdamW's arithmetic) or SGD
/// with momentum 0.9 over named tensors, with a cosine learning-rate schedule from `lr` to 0 over
/// `totalSteps`. Weight decay applies to the tensors `decays` selects.
public struct TensorOptimizer: Sendable {
    public let kind: TuneOptimizer
    public let lr: Float, weightDecay: Float, totalSteps: Int
    public var step = 0
    public private(set) var m: [Float], v: [Float]
    let decay: [Bool]

    public init(kind: TuneOptimizer, lr: Float, weightDecay: Float, totalSteps: Int, parameters: NamedTensors,
                decays: (String) -> Bool) {
        self.kind = kind; self.lr = lr; self.weightDecay = weightDecay; self.totalSteps = max(1, totalSteps)
        let n = parameters.count
        m = [Float](repeating: 0, count: n); v = [Float](repeating: 0, count: n)
        var d = [Bool](repeating: false, count: n)
        for r in parameters.ranges(where: decays) { for i in r { d[i] = true } }
        decay = d
    }

    /// The learning rate of the current step (cosine: lr · (1 + cos(π · step / total)) / 2).
    public var currentLR: Float { lr * 0.5 * (1 + cosf(Float.pi * Float(min(step, totalSteps)) / Float(totalSteps))) }

    public mutating func apply(_ g: NamedTensors, to p: inout NamedTensors) {
        precondition(g.sameLayout(as: p), "TensorOptimizer: gradients do not match the parameters")
        var x = p.flat
        let a = currentLR  // the schedule's value before the step counts
        step += 1
        optimizerUpdate(kind, x: &x, gradient: g.flat, m: &m, v: &v, step: step, lr: a, weightDecay: weightDecay, decay: decay)
        p.setFlat(x)
    }

    public mutating func restore(step: Int, m: [Float], v: [Float]) throws {
        guard m.count == self.m.count, v.count == self.v.count else { throw ZeroSegError("checkpoint optimiser state does not fit these parameters") }
        self.step = step; self.m = m; self.v = v
    }
}

/// One optimiser update of x in place (both tuners' optimisers): AdamW (torch.optim.AdamW's
/// arithmetic: decoupled decay, bias-corrected moments, β 0.9 / 0.999, ε 1e-8) or SGD with momentum
/// 0.9 and L2 decay, at learning rate `lr`, `step` counting from 1; `decay[i]`: weight decay on x[i].
func optimizerUpdate(_ kind: TuneOptimizer, x: inout [Float], gradient gr: [Float], m: inout [Float], v: inout [Float],
                     step: Int, lr a: Float, weightDecay: Float, decay: [Bool]) {
    precondition(gr.count == x.count && m.count == x.count && v.count == x.count && decay.count == x.count)
    switch kind {
    case .adamw:
        let (b1, b2, eps): (Float, Float, Float) = (0.9, 0.999, 1e-8)
        let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
        for i in x.indices {
            if decay[i] { x[i] -= a * weightDecay * x[i] }
            m[i] = b1 * m[i] + (1 - b1) * gr[i]
            v[i] = b2 * v[i] + (1 - b2) * gr[i] * gr[i]
            x[i] -= a * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
        }
    case .sgd:
        for i in x.indices {
            var gi = gr[i]
            if decay[i] { gi += weightDecay * x[i] }
            m[i] = 0.9 * m[i] + gi
            x[i] -= a * m[i]
        }
    }
}
