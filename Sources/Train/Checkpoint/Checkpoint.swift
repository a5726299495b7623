// Training checkpoints: everything a run needs to continue exactly where it stopped (adapter values, both AdamW
// moments, step, data order, RNG state) plus the run's settings, so a resume with other settings is refused.
//
// File layout (little-endian), one file per checkpoint, `checkpoint-<step, 9 digits>.lorackpt`:
//   magic "LORACKPT" | u32 version (1) | u64 header length H | H bytes of JSON header | f32 values[n] | f32 m[n]
//   | f32 v[n] | u64 FNV-1a 64 of every preceding byte
// The header holds n, so a truncated file is detected by its length and a corrupted one by the checksum. Header
// field `tokensSeen` (tokens run through the model so far) was added later within version 1; a header without it
// (an older checkpoint) loads with 0.
// Files are written with AtomicFile (temporary file, fsync, rename, directory fsync); the store keeps the last
// `keep` (default 2) and never removes one before its successor is durable.
import Foundation
import Runtime

/// The settings a run was started with; a resume must present the same ones.
public struct RunSettings: Sendable, Equatable, Codable {
    /// `sft` or `dpo`.
    public var method: String
    /// Adapter shape.
    public var lora: LoRAConfig
    /// Optimizer hyper-parameters.
    public var adamw: AdamWConfig
    /// Learning-rate schedule.
    public var schedule: LRSchedule
    /// Examples (or pairs) per micro-batch.
    public var batchSize: Int
    /// Micro-batches per optimizer step.
    public var gradientAccumulation: Int
    /// Global L2 clipping norm (0 = no clipping).
    public var maxGradNorm: Double
    /// Seed of the run's `TrainingRNG`.
    public var seed: UInt64
    /// Whether each epoch's order is shuffled.
    public var shuffle: Bool
    /// Sequence length limit in tokens.
    public var maxLength: Int
    /// DPO `beta` (0 for SFT).
    public var beta: Double
    /// An identifier of the training data, compared as an opaque string ("" if none). `lorad train` stores the
    /// SHA-256 of the data file's bytes in lowercase hex (FIPS 180-4, OpenSSL), so a resume on a changed file is
    /// refused.
    public var dataDigest: String
    /// An identifier of the base model (e.g. its path or digest).
    public var baseModel: String

    /// - Parameters: see the properties.
    public init(method: String, lora: LoRAConfig, adamw: AdamWConfig, schedule: LRSchedule, batchSize: Int,
                gradientAccumulation: Int = 1, maxGradNorm: Double, seed: UInt64, shuffle: Bool = true,
                maxLength: Int, beta: Double = 0, dataDigest: String = "", baseModel: String) {
        self.method = method
        self.lora = lora
        self.adamw = adamw
        self.schedule = schedule
        self.batchSize = batchSize
        self.gradientAccumulation = gradientAccumulation
        self.maxGradNorm = maxGradNorm
        self.seed = seed
        self.shuffle = shuffle
        self.maxLength = maxLength
        self.beta = beta
        self.dataDigest = dataDigest
        self.baseModel = baseModel
    }

    /// Names of the settings that differ from `other` (empty when a resume may proceed).
    public func differences(from other: RunSettings) -> [String] {
        var d: [String] = []
        if method != other.method { d.append("method") }
        if lora != other.lora { d.append("lora") }
        if adamw != other.adamw { d.append("adamw") }
        if schedule != other.schedule { d.append("schedule") }
        if batchSize != other.batchSize { d.append("batch_size") }
        if gradientAccumulation != other.gradientAccumulation { d.append("gradient_accumulation") }
        if maxGradNorm != other.maxGradNorm { d.append("max_grad_norm") }
        if seed != other.seed { d.append("seed") }
        if shuffle != other.shuffle { d.append("shuffle") }
        if maxLength != other.maxLength { d.append("max_length") }
        if beta != other.beta { d.append("beta") }
        if dataDigest != other.dataDigest { d.append("data") }
        if baseModel != other.baseModel { d.append("base_model") }
        return d
    }
}

/// The complete state of a run after `optimizer.step` updates.
public struct TrainingCheckpoint: Sendable {
    /// Settings of the run.
    public var settings: RunSettings
    /// The adapter (its `config` equals `settings.lora`).
    public var parameters: LoRAParameters
    /// Moments and step count (`optimizer.step` is the run's step).
    public var optimizer: AdamWState
    /// Position in the data.
    public var dataOrder: DataOrder
    /// Random generator state after the last draw.
    public var rng: TrainingRNG
    /// Tokens run through the model (all positions of all sequences) over the run so far; 0 when loaded from a
    /// checkpoint written before the count was stored.
    public var tokensSeen: Int

    /// - Parameters: see the properties.
    public init(settings: RunSettings, parameters: LoRAParameters, optimizer: AdamWState, dataOrder: DataOrder,
                rng: TrainingRNG, tokensSeen: Int = 0) {
        self.settings = settings
        self.parameters = parameters
        self.optimizer = optimizer
        self.dataOrder = dataOrder
        self.rng = rng
        self.tokensSeen = tokensSeen
    }

    /// Optimizer steps taken.
    public var step: Int { optimizer.step }
}

/// Why a checkpoint cannot be used.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    /// Shorter than its header says (an interrupted copy).
    case truncated(path: String, expected: Int, actual: Int)
    /// Wrong magic, version, header, or checksum.
    case corrupt(path: String, reason: String)
    /// The checkpoint was written by a run with other settings.
    case settingsMismatch(path: String, fields: [String])
    /// The checkpoint's adapter does not fit the model it is loaded for.
    case doesNotFitModel(path: String, reason: String)
    /// No checkpoint in the directory.
    case none(directory: String)

    public var description: String {
        switch self {
        case .truncated(let p, let e, let a): return "checkpoint \(p) is truncated: \(a) bytes, \(e) expected"
        case .corrupt(let p, let r): return "checkpoint \(p) is corrupt: \(r)"
        case .settingsMismatch(let p, let f):
            return "checkpoint \(p) was written with other settings (\(f.joined(separator: ", "))); refusing to resume"
        case .doesNotFitModel(let p, let r): return "checkpoint \(p) does not fit the model: \(r)"
        case .none(let d): return "no checkpoint in \(d)"
        }
    }
}

/// Encoding and decoding of checkpoint files.
public enum CheckpointCodec {
    static let magic: [UInt8] = Array("LORACKPT".utf8)
    static let version: UInt32 = 1

    struct Header: Codable {
        var settings: RunSettings
        var step: Int
        var count: Int
        var dataOrder: DataOrder
        var rng: [UInt64]
        /// Absent in checkpoints written before it was stored (decoded as nil, loaded as 0).
        var tokensSeen: Int?
    }

    /// FNV-1a 64-bit hash (Fowler–Noll–Vo), used as the file checksum.
    public static func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01b3
        }
        return h
    }

    /// The file bytes of `checkpoint`.
    public static func encode(_ c: TrainingCheckpoint) throws -> [UInt8] {
        let header = Header(settings: c.settings, step: c.step, count: c.parameters.count, dataOrder: c.dataOrder,
                            rng: c.rng.state, tokensSeen: c.tokensSeen)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = try encoder.encode(header)
        var out: [UInt8] = magic
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        u32(version)
        u64(UInt64(json.count))
        out.append(contentsOf: json)
        for array in [c.parameters.values, c.optimizer.m, c.optimizer.v] {
            array.withUnsafeBytes { out.append(contentsOf: $0) }  // f32 little-endian on the supported platforms
        }
        let sum = out.withUnsafeBytes { fnv1a($0) }
        u64(sum)
        return out
    }

    /// Decodes a checkpoint for a model of shape `model`.
    /// - Throws: `CheckpointError.truncated`, `.corrupt`, `.doesNotFitModel`.
    public static func decode(_ bytes: [UInt8], path: String, model: ModelConfig) throws -> TrainingCheckpoint {
        func corrupt(_ r: String) -> CheckpointError { .corrupt(path: path, reason: r) }
        let fixed = magic.count + 4 + 8
        guard bytes.count >= fixed + 8 else { throw CheckpointError.truncated(path: path, expected: fixed + 8, actual: bytes.count) }
        guard Array(bytes[0..<8]) == magic else { throw corrupt("not a lorad checkpoint (bad magic)") }
        func u64(_ at: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        let version = bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) }
        guard version == Self.version else { throw corrupt("unsupported version \(version)") }
        let headerLength = u64(12)
        guard headerLength <= UInt64(bytes.count), fixed + Int(headerLength) + 8 <= bytes.count else {
            throw CheckpointError.truncated(path: path, expected: fixed + Int(clamping: min(headerLength, 1 << 40)) + 8,
                                            actual: bytes.count)
        }
        let hEnd = fixed + Int(headerLength)
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(bytes[fixed..<hEnd]))
        } catch {
            throw corrupt("unreadable header")
        }
        guard header.count >= 0, header.count < Int.max / 16 else { throw corrupt("bad parameter count") }
        let expected = hEnd + 3 * 4 * header.count + 8
        guard bytes.count == expected else {
            if bytes.count < expected { throw CheckpointError.truncated(path: path, expected: expected, actual: bytes.count) }
            throw corrupt("\(bytes.count - expected) unexpected trailing bytes")
        }
        let sum = bytes.withUnsafeBytes { fnv1a(UnsafeRawBufferPointer(rebasing: $0[0..<expected - 8])) }
        guard sum == u64(expected - 8) else { throw corrupt("checksum mismatch") }
        func floats(_ k: Int) -> [Float] {
            let start = hEnd + k * 4 * header.count
            return [Float](unsafeUninitializedCapacity: header.count) { buf, n in
                bytes.withUnsafeBytes { raw in
                    for i in 0..<header.count {
                        buf[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: start + 4 * i, as: UInt32.self)))
                    }
                }
                n = header.count
            }
        }
        do { try LoRAParameters.validate(header.settings.lora, model: model) } catch {
            throw CheckpointError.doesNotFitModel(path: path, reason: "\(error)")
        }
        var params = LoRAParameters(config: header.settings.lora, model: model)
        guard params.count == header.count else {
            throw CheckpointError.doesNotFitModel(path: path, reason: "\(header.count) parameters, the model's layout has \(params.count)")
        }
        params.values = floats(0)
        guard let rng = TrainingRNG(state: header.rng) else { throw corrupt("invalid RNG state") }
        guard header.step >= 0 else { throw corrupt("negative step") }
        guard (header.tokensSeen ?? 0) >= 0 else { throw corrupt("negative token count") }
        return TrainingCheckpoint(settings: header.settings, parameters: params,
                                  optimizer: AdamWState(m: floats(1), v: floats(2), step: header.step),
                                  dataOrder: header.dataOrder, rng: rng, tokensSeen: header.tokensSeen ?? 0)
    }
}

/// A directory of checkpoints of one run: writes new ones atomically, keeps the newest `keep`, loads the newest
/// readable one.
public struct CheckpointStore: Sendable {
    /// The directory.
    public let directory: String
    /// How many checkpoints to keep (≥ 1; default 2, so a damaged newest one leaves its predecessor).
    public let keep: Int
    /// Failure injection for tests (see `AtomicFile.WriteFault`).
    public var fault: AtomicFile.WriteFault?

    /// - Parameters: directory: created when saving if missing; keep: number of checkpoints kept (≥ 1).
    public init(directory: String, keep: Int = 2) {
        self.directory = directory
        self.keep = max(1, keep)
    }

    /// The file name of the checkpoint at `step`.
    public static func fileName(step: Int) -> String {
        let digits = String(step)
        return "checkpoint-" + String(repeating: "0", count: max(0, 9 - digits.count)) + digits + ".lorackpt"
    }

    /// Existing checkpoint files as `(step, path)`, oldest first.
    public func list() -> [(step: Int, path: String)] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.compactMap { n -> (Int, String)? in
            guard n.hasPrefix("checkpoint-"), n.hasSuffix(".lorackpt"),
                let s = Int(n.dropFirst("checkpoint-".count).dropLast(".lorackpt".count))
            else { return nil }
            return (s, directory + "/" + n)
        }.sorted { $0.0 < $1.0 }
    }

    /// Writes `checkpoint` durably, then removes the oldest files beyond `keep`. If the write fails (ENOSPC, …)
    /// nothing else is touched.
    /// - Returns: the path written.
    /// - Throws: `FileIOError`, or an encoding error.
    @discardableResult
    public func save(_ checkpoint: TrainingCheckpoint) throws -> String {
        try AtomicFile.makeDirectory(directory)
        let path = directory + "/" + Self.fileName(step: checkpoint.step)
        try AtomicFile.write(try CheckpointCodec.encode(checkpoint), to: path, fault: fault)
        let all = list()
        if all.count > keep {
            for old in all.prefix(all.count - keep) where old.path != path { unlink(old.path) }
            try AtomicFile.syncDirectory(directory)
        }
        return path
    }

    /// Loads one checkpoint file.
    /// - Throws: `FileIOError`, `CheckpointError`.
    public static func load(path: String, model: ModelConfig) throws -> TrainingCheckpoint {
        try CheckpointCodec.decode(AtomicFile.read(path), path: path, model: model)
    }

    /// The newest checkpoint that loads; damaged newer files are skipped and reported, never deleted.
    /// - Parameter settings: when given, a checkpoint with other settings is refused
    ///   (`CheckpointError.settingsMismatch`).
    /// - Returns: the checkpoint, its path, and the errors of newer files that were skipped.
    /// - Throws: `CheckpointError.none` when nothing loads (the last error is thrown if files exist but all are
    ///   damaged), `.settingsMismatch`.
    public func loadLatest(model: ModelConfig, settings: RunSettings? = nil) throws
        -> (checkpoint: TrainingCheckpoint, path: String, skipped: [Error])
    {
        var skipped: [Error] = []
        for entry in list().reversed() {
            do {
                let c = try Self.load(path: entry.path, model: model)
                if let settings {
                    let diff = settings.differences(from: c.settings)
                    guard diff.isEmpty else { throw CheckpointError.settingsMismatch(path: entry.path, fields: diff) }
                }
                return (c, entry.path, skipped)
            } catch let e as CheckpointError {
                if case .settingsMismatch = e { throw e }
                skipped.append(e)
            }
        }
        if let last = skipped.last { throw last }
        throw CheckpointError.none(directory: directory)
    }
}
