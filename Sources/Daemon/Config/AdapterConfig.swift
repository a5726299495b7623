// AdapterConfig: the `adapters:` mapping of the config file. Each adapter name takes (for now) one key, `training:`,
// with the keys of `PUT /v1/adapters/{name}/training`. The policy is validated when the file is read, so a bad file
// is refused with the dotted path (`adapters.support-bot.training.trigger.min_interval: …`): at start-up lorad exits,
// on SIGHUP the running configuration stays. Applying the policies to the store is `Continual/ConfigPolicies.swift`.
//
// YAML scalars reach the policy as Yams resolves them (YAML 1.1): `50` is an int, `0.3` a double, `true` (also
// `yes`/`on`) a bool, `~`/`null` null, `1h` and `daily 03:00` strings; a quoted scalar is always a string. One
// exception: a base-60 number such as `1:30` (YAML 1.1 reads 90) stays the text the file wrote, so
// `min_interval: 1:30` is refused rather than taken as 90 seconds.

import Foundation
import Yams

/// The settings of one adapter name in the config file (`adapters.NAME`).
public struct AdapterLayer: Sendable, Equatable {
    /// `adapters.NAME.training`: the adapter's training policy; nil when the key is absent or null.
    public var training: TrainingPolicy?

    /// - Parameter training: see ``training``.
    public init(training: TrainingPolicy? = nil) { self.training = training }

    /// Keys allowed under `adapters.NAME`.
    static let knownKeys = ["training"]
}

extension ConfigFile {
    /// Parses the `adapters:` node of a config file (absent or null: no adapters).
    /// - Returns: the settings by adapter name.
    /// - Throws: ``ConfigError/invalidEntry(path:key:reason:)`` naming the dotted key of the first bad entry.
    static func adapters(_ node: Node?, path: String) throws -> [String: AdapterLayer] {
        guard let node, !isNull(node) else { return [:] }
        func bad(_ key: String, _ reason: String) -> ConfigError { .invalidEntry(path: path, key: key, reason: reason) }
        guard case .mapping(let names) = node else {
            throw bad("adapters", "must be a mapping of adapter names (adapters: {NAME: {training: {...}}})")
        }
        var out: [String: AdapterLayer] = [:]
        for (nameNode, settingsNode) in names {
            guard case .scalar(let scalar) = nameNode else { throw bad("adapters", "an adapter name must be a string") }
            let name = scalar.string
            let key = "adapters.\(name)"
            guard AdapterRegistry.isValidName(name) else {
                throw bad(key, "'\(name)' is not a valid adapter name: use 1 to 128 ASCII letters, digits, '.', '_', "
                    + "'-' or ':'")
            }
            guard out[name] == nil else { throw bad(key, "appears twice") }
            var layer = AdapterLayer()
            if !isNull(settingsNode) {
                guard case .mapping(let settings) = settingsNode else { throw bad(key, "must be a mapping (training: {...})") }
                let keys = settings.keys.map { $0.scalar?.string ?? "?" }
                if let unknown = keys.first(where: { !AdapterLayer.knownKeys.contains($0) }) {
                    throw bad("\(key).\(unknown)", "unknown key (allowed: \(AdapterLayer.knownKeys.joined(separator: ", ")))")
                }
                layer.training = try training(settings["training"], key: "\(key).training", path: path)
            }
            out[name] = layer
        }
        return out
    }

    /// `adapters.NAME.training` (absent or null: no policy), validated by ``TrainingPolicy/init(json:)``.
    static func training(_ node: Node?, key: String, path: String) throws -> TrainingPolicy? {
        guard let node, !isNull(node) else { return nil }
        guard case .mapping = node else {
            throw ConfigError.invalidEntry(
                path: path, key: key, reason: "must be a mapping of training-policy keys (trigger: {...}, method: auto, ...)")
        }
        do {
            return try TrainingPolicy(json: try jsonValue(node, key: key, path: path))
        } catch let e as PolicyError {
            throw ConfigError.invalidEntry(path: path, key: "\(key).\(e.field)", reason: e.message)
        }
    }

    static func isNull(_ node: Node) -> Bool {
        if case .scalar = node { return node.tag.rawValue == Tag.Name.null.rawValue }
        return false
    }

    /// A YAML node as lorad's `JSONValue` (see the file comment for scalars).
    /// - Throws: ``ConfigError/invalidEntry(path:key:reason:)`` for a mapping key that is not a scalar.
    static func jsonValue(_ node: Node, key: String, path: String) throws -> JSONValue {
        switch node {
        case .scalar(let s):
            let text = s.string
            switch Tag.Name(rawValue: node.tag.rawValue) {
            case .null: return .null
            case .bool: return node.bool.map { .bool($0) } ?? .string(text)
            case .int where !text.contains(":"): return node.int.map { .int($0) } ?? .string(text)
            case .float where !text.contains(":"): return node.float.map { .double($0) } ?? .string(text)
            default: return .string(text)
            }
        case .mapping(let m):
            var pairs: [(String, JSONValue)] = []
            for (k, v) in m {
                guard case .scalar(let ks) = k else {
                    throw ConfigError.invalidEntry(path: path, key: key, reason: "mapping keys must be strings")
                }
                pairs.append((ks.string, try jsonValue(v, key: "\(key).\(ks.string)", path: path)))
            }
            return .object(pairs)
        case .sequence(let seq):
            return .array(try seq.enumerated().map { try jsonValue($1, key: "\(key)[\($0)]", path: path) })
        case .alias:
            throw ConfigError.invalidEntry(path: path, key: key, reason: "an unresolved YAML alias")
        }
    }
}
