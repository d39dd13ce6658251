// Segments a picture with the library alone: a seeded synthetic tiny CLIP (no weights can be
// downloaded where this is built, so the labels mean nothing; the point is the API), class
// queries with synonyms, one-stage NACLIP, the label map's areas, and text embeddings.
//
//     swift run zeroseg-example ../chelsea.jpg
import Foundation
import ZeroSeg

let args = CommandLine.arguments.dropFirst()
guard let path = args.first else {
    FileHandle.standardError.write(Data("usage: zeroseg-example IMAGE\n".utf8))
    exit(2)
}
do {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zeroseg-example-\(getpid())")
    defer { try? FileManager.default.removeItem(at: dir) }
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try Synth.write(arch: .tiny, seed: 0, to: dir)
    let model = try CLIPModel(directory: dir)

    let text = try model.encodeText(["a photo of a cat.", "a photo of grass."], threads: 1)
    print("text embeddings: \(text.count) x \(text[0].count)")

    let image = try RGBImage.load(URL(fileURLWithPath: path))
    let classes = try ClassSet.parse("cat,grass|lawn,wall")
    var options = SegmentationOptions()
    options.refine = .none
    let segmenter = try Segmenter(model: model, options: options, threads: 1)
    let queries = try segmenter.queryEmbeddings(classes, templates: ["a photo of a {}."])
    let result = try segmenter.segment(image, classes: classes, queries: queries)
    for (name, area) in zip(classes.displayNames, result.areaFraction) {
        print("\(name): \(String(format: "%.1f", area * 100))% of the picture")
    }
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
