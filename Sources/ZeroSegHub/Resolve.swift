import Foundation
import ZeroSegCore
import ZeroSegCLIP

/// Finds the model a command should use.
/// - A named model (`--model`, else `$ZEROSEG_MODEL`) is a directory in the Hugging Face layout, or a hub id
///   `ORG/NAME[@REVISION]` looked up in the Hugging Face cache and downloaded into it when absent (unless
///   `HF_HUB_OFFLINE=1`). It must load: any failure is an error, never a fallback.
/// - Without one: the default hub id `openai/clip-vit-base-patch16` (cache, then download); only when that fails, a
///   synthetic random ViT-B/16 (seed 0), written once into the zeroseg cache, with a loud warning that says why.
public enum ModelResolver {
    /// The model used when none is named.
    public static let defaultModel = "openai/clip-vit-base-patch16"

    /// `precision`: the arithmetic of the encoders' linear layers; one this CPU cannot run gives
    /// fp32 and a one-line notice through `warn` (`Precision.resolve`).
    public static func load(_ name: String?, precision: Precision = .fp32, warn: (String) -> Void) throws -> CLIPModel {
        try load(name, environment: ProcessInfo.processInfo.environment, precision: precision, warn: warn)
    }

    /// As `load(_:precision:warn:)`, reading `ZEROSEG_MODEL`, `HF_*`, `HOME` and `XDG_CACHE_HOME` from `environment`.
    /// Errors are of kind `.badModel` (or `.unsupported`, `.io`).
    public static func load(_ name: String?, environment env: [String: String], precision: Precision = .fp32,
                            warn: (String) -> Void) throws -> CLIPModel {
        let (p, notice) = Precision.resolve(precision)
        if let notice { warn(notice) }
        return try classifyingErrors(as: .badModel) { try loading(name, environment: env, precision: p, warn: warn) }
    }

    static func loading(_ name: String?, environment env: [String: String], precision p: Precision, warn: (String) -> Void) throws -> CLIPModel {
        if let name, !name.isEmpty { return try CLIPModel(directory: directory(named: name, environment: env, warn: warn), precision: p) }
        if let m = env["ZEROSEG_MODEL"], !m.isEmpty { return try CLIPModel(directory: directory(named: m, environment: env, warn: warn), precision: p) }
        let why: String
        do {
            return try CLIPModel(directory: defaultDirectory(env, warn), precision: p)
        } catch {
            why = errorText(error)
        }
        return try CLIPModel(directory: synthetic(why: why, env, warn), precision: p)
    }

    /// Where the model is, and whether it is the synthetic fallback.
    public struct Resolved: Sendable {
        public let directory: URL
        public let isSyntheticFallback: Bool
    }

    /// The directory `load` would load (downloading a hub model when needed), without loading it.
    public static func resolve(_ name: String?, environment env: [String: String] = ProcessInfo.processInfo.environment,
                               warn: (String) -> Void) throws -> Resolved {
        if let name, !name.isEmpty { return Resolved(directory: try directory(named: name, environment: env, warn: warn), isSyntheticFallback: false) }
        if let m = env["ZEROSEG_MODEL"], !m.isEmpty {
            return Resolved(directory: try directory(named: m, environment: env, warn: warn), isSyntheticFallback: false)
        }
        do {
            return Resolved(directory: try defaultDirectory(env, warn), isSyntheticFallback: false)
        } catch {
            return Resolved(directory: try synthetic(why: errorText(error), env, warn), isSyntheticFallback: true)
        }
    }

    /// The default model's snapshot: from the Hugging Face cache, else downloaded (unless offline).
    static func defaultDirectory(_ env: [String: String], _ warn: (String) -> Void) throws -> URL {
        let repo = try HubRepo(parsing: defaultModel)
        return try withoutActuallyEscaping(warn) { w in try Hub(environment: env, log: w).snapshot(repo) }
    }

    /// The synthetic fallback (written once), with the warning that says why the real model is not used.
    static func synthetic(why: String, _ env: [String: String], _ warn: (String) -> Void) throws -> URL {
        let dir = cacheDirectory(environment: env).appendingPathComponent("synthetic/vit-b-16-seed0")
        warn("""
            warning: no model given (--model or $ZEROSEG_MODEL) and \(defaultModel) is not available (\(why)): using a \
            SYNTHETIC random ViT-B/16 (seed 0). Its outputs are meaningless; see weights/README.md to get real weights.
            """)
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) {
            warn("writing the synthetic model to \(dir.path) (once)")
            try Synth.write(arch: .vitB16, seed: 0, to: dir)
        }
        return dir
    }

    /// A model named by the user: an existing directory, else a hub id (`ORG/NAME[@REVISION]`) from the
    /// Hugging Face cache, downloaded into it when absent unless `HF_HUB_OFFLINE` is set. Errors name the cause.
    public static func directory(named name: String, environment env: [String: String] = ProcessInfo.processInfo.environment,
                                 warn: (String) -> Void) throws -> URL {
        try classifyingErrors(as: .badModel) { try findDirectory(named: name, environment: env, warn: warn) }
    }

    static func findDirectory(named name: String, environment env: [String: String], warn: (String) -> Void) throws -> URL {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: name, isDirectory: &isDir) {
            guard isDir.boolValue else { throw ZeroSegError("model \(name) is a file: give a directory or a hub id ORG/NAME") }
            return URL(fileURLWithPath: name, isDirectory: true)
        }
        guard HubRepo.looksLikeID(name), !name.hasPrefix(".") else {
            throw ZeroSegError("model \(name) not found: give a directory in the Hugging Face layout (config.json, model.safetensors, vocab.json, merges.txt) or a hub id ORG/NAME[@REVISION]")
        }
        let repo = try HubRepo(parsing: name)
        do {
            return try withoutActuallyEscaping(warn) { w in try Hub(environment: env, log: w).snapshot(repo) }
        } catch {
            // "org/name" could also have been meant as a path
            throw name.contains("@") ? error : ZeroSegError("\(errorText(error)) (no directory \(name) either)")
        }
    }

    /// `$XDG_CACHE_HOME/zeroseg`, else `~/.cache/zeroseg` (see `CacheDirectory`).
    public static func cacheDirectory() -> URL { CacheDirectory.url() }
    public static func cacheDirectory(environment env: [String: String]) -> URL { CacheDirectory.url(environment: env) }
}
