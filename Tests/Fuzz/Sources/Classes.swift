import Foundation
import ZeroSeg
@testable import ZeroSegSegmentation

/// The class list and synonym parser: the input up to its first NUL byte as the list
/// ("road,car,pavement|sidewalk"), the rest as the background list; and the whole input as a class
/// file (one class per line, # comments).
let classesTarget = FuzzTarget(name: "classes", covers: "ClassSet.parse (lists, synonyms, background) and class files") { bytes in
    let parts = bytes.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
    let list = String(decoding: parts[0], as: UTF8.self)
    let background = parts.count > 1 ? String(decoding: parts[1], as: UTF8.self) : nil
    do {
        let c = try ClassSet.parse(list, background: background)
        precondition(c.queries.count == c.classes.reduce(0) { $0 + $1.count } + c.background.count)
        precondition(c.displayNames.count == c.classes.count)
    } catch { expectTyped(error) }
    do {
        let c = try ClassSet.parseFile(Data(bytes), source: "fuzz.txt", background: [])
        precondition(!c.classes.isEmpty)
    } catch { expectTyped(error) }
}
