import Foundation
import ZeroSegCore
import ZeroSegCLIP

/// What an output folder already holds for one input, for a run that resumes
/// (`SegmentationPipeline.run(skipExisting:)`).
///
/// An input's outputs are complete when `NAME.json` is there: `write` writes it last, each file
/// atomically, and removes the input's files when any write fails, so a `NAME.json` exists only
/// after every other file of the input was written. It is taken as this run's output when it
/// also says the same: the same image path, classes (names, synonyms, order, colours), settings,
/// model (the weights' fingerprint and the precision) and zeroseg version; every other file the
/// run would write (labels, overlay, and as asked scores and proposals) is there; and the image
/// file is not newer than `NAME.json`. Anything else is stale and is segmented again.
public enum ExistingOutputs: Sendable, Equatable {
    /// No `NAME.json`: nothing finished for this input.
    case absent
    /// Finished by an earlier run with the same inputs and settings: can be skipped.
    case complete
    /// Outputs made otherwise, or incomplete (the reason, one line): to be made again.
    case stale(String)
}

extension SegmentationPipeline {
    /// Whether `dir` holds this pipeline's complete outputs for `input` (see `ExistingOutputs`).
    public func existingOutputs(for input: URL, in dir: URL, outputs: SegmentationOutputs = SegmentationOutputs()) -> ExistingOutputs {
        let fm = FileManager.default
        let stem = input.deletingPathExtension().lastPathComponent
        let jsonURL = dir.appendingPathComponent(stem + ".json")
        guard fm.fileExists(atPath: jsonURL.path) else { return .absent }
        let name = jsonURL.lastPathComponent
        guard let data = fm.contents(atPath: jsonURL.path), let old = try? JSONOutput.decode(SegmentRecord.self, from: data) else {
            return .stale("\(name) is not a segmentation record")
        }
        if old.header.command != "segment" { return .stale("\(name) was made by \(old.header.command)") }
        if old.header.zerosegVersion != ZeroSegCore.version {
            return .stale("\(name) was made by zeroseg \(old.header.zerosegVersion), this is \(ZeroSegCore.version)")
        }
        let model = ModelRecord(self.model)
        if old.header.model.fingerprint != model.fingerprint || (old.header.model.precision ?? "fp32") != model.precision {
            return .stale("\(name) was made with another model")
        }
        if old.image != input.path { return .stale("\(name) was made from another image (\(old.image))") }
        let settingsNow = SettingsRecord(segmentation: settings.record(background: classes.background))
        if (try? JSONOutput.line(old.settings)) != (try? JSONOutput.line(settingsNow)) {
            return .stale("\(name) was made with other settings")
        }
        let classesNow = classes.classes.enumerated().map { i, names in
            [String(i), names.joined(separator: "|"), palette[i].0.description, palette[i].1.description, palette[i].2.description]
        }
        let classesOld = old.classes.map { [String($0.index), $0.names.joined(separator: "|")] + $0.color.map(String.init) }
        if classesNow != classesOld { return .stale("\(name) was made with other classes") }
        if (old.regions != nil) != (twoStage != nil) { return .stale("\(name) was made in the other mode") }
        var needed = [stem + ".labels.png", stem + ".overlay.png"]
        if outputs.scores { needed.append(stem + ".scores.npy") }
        if outputs.proposals {
            let files = old.regions?.compactMap(\.file) ?? []
            if files.count != old.regions?.count ?? 0 { return .stale("\(name) has no saved proposal masks") }
            needed += [stem + ".proposals.json"] + files
        }
        if let missing = needed.first(where: { !fm.fileExists(atPath: dir.appendingPathComponent($0).path) }) {
            return .stale("\(missing) is missing")
        }
        let jsonDate = (try? fm.attributesOfItem(atPath: jsonURL.path)[.modificationDate]) as? Date
        let imageDate = (try? fm.attributesOfItem(atPath: input.path)[.modificationDate]) as? Date
        if let j = jsonDate, let i = imageDate, i > j { return .stale("\(input.lastPathComponent) is newer than \(name)") }
        return .complete
    }
}
