import Foundation
import ZeroSeg
@testable import ZeroSegHub

/// What the hub's answers and the user give the hub client, from the input's lines:
///   line 1: a model spec `ORG/NAME[@REVISION]` (HubRepo(parsing:), looksLikeID);
///   line 2: an HTTP status; then `Name: value` header lines (the HEAD answer: X-Repo-Commit,
///   ETag / X-Linked-Etag, sizes, X-Error-Code, Location ...) and `KEY=value` lines (HF_ENDPOINT,
///   HF_TOKEN, HF_HUB_OFFLINE; paths stay in the scratch folder); the last line is also written as
///   the cache's refs/<revision> file.
/// Reached: the file info from the headers (commit, etag checks, sizes), the error answers, the
/// resolve URL, the cache's commit lookup and whether a snapshot is usable.
let hubHeadersTarget = FuzzTarget(name: "hub-headers", covers: "HubRepo specs, HEAD answer headers (HubClient.info / throwHubError), settings, refs") { bytes in
    let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    let spec = lines[0]
    _ = HubRepo.looksLikeID(spec)
    let repo: HubRepo
    do { repo = try HubRepo(parsing: spec) } catch {
        expectTyped(error)
        guard let r = try? HubRepo(parsing: "org/model") else { fatalError() }
        repo = r
    }
    let status = lines.count > 1 ? max(0, min(999, Int(lines[1].trimmingCharacters(in: .whitespaces)) ?? 200)) : 200
    var headers: [String: String] = [:]
    var env = ["HOME": fuzzScratch.path, "HF_HOME": fuzzScratch.appendingPathComponent("hf").path]
    for line in lines.dropFirst(2) {
        if let colon = line.firstIndex(of: ":") {
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        } else if let eq = line.firstIndex(of: "=") {
            let k = String(line[..<eq])
            if ["HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"].contains(k) { env[k] = String(line[line.index(after: eq)...]) }
        }
    }
    let settings = HubSettings(environment: env)
    let client = HubClient(settings: settings, repo: repo)
    let reply = HTTPReply(status: status, headers: headers, url: URL(string: "https://huggingface.co/x")!)
    do {
        let u = try client.resolveURL("model.safetensors", revision: repo.revision)
        let info = try client.info("model.safetensors", reply, downloadURL: u, sendToken: true)
        precondition(HubRepo.isCommitHash(info.commit) && (info.etag.utf8.count == 40 || info.etag.utf8.count == 64))
    } catch { expectTyped(error) }
    do { try client.throwHubError(reply, file: "model.safetensors") } catch { expectTyped(error) }
    // The cache's ref file for this revision.
    let cache = HubCache(settings: settings)
    let refs = cache.repoFolder(repo).appendingPathComponent("refs")
    let ref = refs.appendingPathComponent(repo.revision)
    if (try? FileManager.default.createDirectory(at: ref.deletingLastPathComponent(), withIntermediateDirectories: true)) != nil {
        FileManager.default.createFile(atPath: ref.path, contents: Data((lines.last ?? "").utf8))
        _ = cache.commit(for: repo)
        _ = cache.usableSnapshot(repo)
        _ = cache.whyNotUsable(repo)
    }
    try? FileManager.default.removeItem(at: cache.repoFolder(repo))
}
