import ArgumentParser
import Foundation
import ZeroSeg

/// `zeroseg weights fetch ID [--revision R]`: downloads a CLIP model into the Hugging Face cache and prints
/// its snapshot directory on stdout (messages on stderr).
struct Fetch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a CLIP model from the Hugging Face hub into its cache (reusable by Python tools) and print the snapshot directory.",
        discussion: """
            Fetches config.json and/or open_clip_config.json, the first of model.safetensors, open_clip_model.safetensors, \
            pytorch_model.bin, open_clip_pytorch_model.bin whose layout's config exists, and vocab.json, merges.txt, \
            preprocessor_config.json when they exist; every file is checked against the hub's sha256 / git sha1. Cache: $HF_HUB_CACHE, else \
            $HF_HOME/hub, else ~/.cache/huggingface/hub. Hub: $HF_ENDPOINT (default https://huggingface.co), token \
            $HF_TOKEN. With HF_HUB_OFFLINE=1 only the cache is looked at.
            """)

    @Argument(help: "Hub id ORG/NAME[@REVISION], e.g. openai/clip-vit-base-patch16.")
    var id: String

    @Option(help: "Branch, tag or commit hash (default: main).")
    var revision: String?

    func validate() throws {
        if let revision, let at = id.firstIndex(of: "@") {
            let named = id[id.index(after: at)...]
            if !named.isEmpty && named != revision { throw ValidationError("\(id) names revision \(named) but --revision says \(revision)") }
        }
    }

    func run() throws {
        let repo = try HubRepo(parsing: id, revision: revision)
        let hub = Hub(log: { printErr($0) })
        let r = try hub.fetch(repo)
        let commit = String(r.commit.prefix(12))
        if r.downloaded.isEmpty {
            printErr("\(repo) (commit \(commit)) is in the cache: \(r.files.joined(separator: ", "))")
        } else {
            let n = r.downloaded.count
            printErr("downloaded \(n) file\(n == 1 ? "" : "s") of \(repo) (commit \(commit)): \(r.files.joined(separator: ", "))")
        }
        print(r.snapshot.path)
    }
}
