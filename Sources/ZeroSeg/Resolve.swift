import Foundation

/// Finds the model a command should use.
/// - A named model (`--model DIR`) must load; any failure is an error, never a fallback.
/// - Without one: `$ZEROSEG_MODEL`; else a synthetic random ViT-B/16 (seed 0), written once into
///   the zeroseg cache, with a loud warning: its outputs are meaningless.
public enum ModelResolver {
    public static func load(_ name: String?, warn: (String) -> Void) throws -> CLIPModel {
        if let name, !name.isEmpty { return try loadNamed(name) }
        if let env = ProcessInfo.processInfo.environment["ZEROSEG_MODEL"], !env.isEmpty {
            return try loadNamed(env)
        }
        let dir = cacheDirectory().appendingPathComponent("synthetic/vit-b-16-seed0")
        warn("""
            warning: no model given (--model or $ZEROSEG_MODEL) and no real weights found: using a SYNTHETIC \
            random ViT-B/16 (seed 0). Its outputs are meaningless; see weights/README.md to get real weights.
            """)
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) {
            warn("writing the synthetic model to \(dir.path) (once)")
            try Synth.write(arch: .vitB16, seed: 0, to: dir)
        }
        return try CLIPModel(directory: dir)
    }

    static func loadNamed(_ name: String) throws -> CLIPModel {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: name, isDirectory: &isDir), isDir.boolValue else {
            throw ZeroSegError("model \(name) not found: give a directory in the Hugging Face layout (config.json, model.safetensors, vocab.json, merges.txt)")
        }
        return try CLIPModel(directory: URL(fileURLWithPath: name))
    }

    /// `$XDG_CACHE_HOME/zeroseg`, else `~/.cache/zeroseg`.
    public static func cacheDirectory() -> URL {
        let env = ProcessInfo.processInfo.environment
        if let x = env["XDG_CACHE_HOME"], !x.isEmpty { return URL(fileURLWithPath: x).appendingPathComponent("zeroseg") }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/zeroseg")
    }
}
