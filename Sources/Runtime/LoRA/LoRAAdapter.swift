// LoRA adapter weights as the forward pass applies them: per (layer, projection) a pair lora_A [rank, n_in] and
// lora_B [n_out, rank] in f32, with the effective scale alpha/rank folded in per module.
// Math: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685):
// y = W·x + (alpha/r)·B·(A·x). llama.cpp applies it the same way (src/llama-graph.cpp build_lora_mm).
import COpenBLAS

/// The linear projections of a transformer block that a LoRA adapter may patch, with llama.cpp's GGUF names.
/// Hugging Face names in comments (Gemma 3 / Llama `nn.Linear` modules of a decoder block).
public enum Projection: String, Sendable, CaseIterable, Hashable {
    /// Query projection `[n_head·head_dim, n_embd]` (`self_attn.q_proj`).
    case attnQ = "attn_q"
    /// Key projection `[n_head_kv·head_dim, n_embd]` (`self_attn.k_proj`).
    case attnK = "attn_k"
    /// Value projection `[n_head_kv·head_dim, n_embd]` (`self_attn.v_proj`).
    case attnV = "attn_v"
    /// Attention output projection `[n_embd, n_head·head_dim]` (`self_attn.o_proj`).
    case attnOutput = "attn_output"
    /// Feed-forward gate `[n_ff, n_embd]` (`mlp.gate_proj`).
    case ffnGate = "ffn_gate"
    /// Feed-forward up projection `[n_ff, n_embd]` (`mlp.up_proj`).
    case ffnUp = "ffn_up"
    /// Feed-forward down projection `[n_embd, n_ff]` (`mlp.down_proj`).
    case ffnDown = "ffn_down"
}

/// Identifies one patched weight: block index and projection.
public struct ModuleKey: Hashable, Sendable {
    /// Block index, `0..<n_layer`.
    public let layer: Int
    /// Which weight of the block.
    public let projection: Projection
    /// - Parameters: layer: block index `0..<n_layer`; projection: which weight of the block.
    public init(layer: Int, projection: Projection) {
        self.layer = layer
        self.projection = projection
    }
}

/// One low-rank update `ΔW = scale · B·A` of a weight `W [n_out, n_in]`.
public struct LoRAModule: @unchecked Sendable {
    /// Rank `r`.
    public let rank: Int
    /// Input width `n_in` (columns of W).
    public let nIn: Int
    /// Output width `n_out` (rows of W).
    public let nOut: Int
    /// `lora_A`, row-major `[rank, n_in]`.
    public let a: [Float]
    /// `lora_B`, row-major `[n_out, rank]`.
    public let b: [Float]
    /// Effective multiplier of B·A from the adapter itself: `alpha / rank` (or `alpha / sqrt(rank)` for rsLoRA).
    public let scale: Float

    /// - Precondition: `a.count == rank * nIn`, `b.count == nOut * rank` (callers validate untrusted input first).
    public init(rank: Int, nIn: Int, nOut: Int, a: [Float], b: [Float], scale: Float) {
        precondition(a.count == rank * nIn && b.count == nOut * rank, "LoRA module shape mismatch")
        self.rank = rank
        self.nIn = nIn
        self.nOut = nOut
        self.a = a
        self.b = b
        self.scale = scale
    }

    /// Bytes held by A and B.
    public var byteCount: Int { (a.count + b.count) * MemoryLayout<Float>.stride }
}

/// A loaded LoRA adapter: a set of modules keyed by (layer, projection). Immutable once built, so a running
/// sequence can keep using a version while a newer one is registered under the same name.
public final class LoRAAdapter: @unchecked Sendable {
    /// Display name (registry name or file name).
    public let name: String
    /// The patched modules.
    public let modules: [ModuleKey: LoRAModule]
    /// The adapter's `alpha` as its file states it (GGUF `adapter.lora.alpha`, PEFT `lora_alpha`), or nil when the
    /// file does not say. Dimensionless. Each module's `scale` already includes it (and any per-module override,
    /// such as PEFT's `alpha_pattern`), so this is informational.
    public let alpha: Float?
    /// True when the scale is `alpha / sqrt(rank)` (rank-stabilised LoRA, Kalajdzievski 2023, arXiv:2312.03732;
    /// PEFT `use_rslora`) rather than `alpha / rank`.
    public let usesRSLoRA: Bool

    /// - Parameters: name: display name; modules: the patched weights (validated by the loader beforehand).
    ///   `alpha` is nil and `usesRSLoRA` false.
    public init(name: String, modules: [ModuleKey: LoRAModule]) {
        self.name = name
        self.modules = modules
        self.alpha = nil
        self.usesRSLoRA = false
    }

    /// - Parameters:
    ///   - name: display name.
    ///   - modules: the patched weights (validated by the loader beforehand).
    ///   - alpha: the file's `alpha` (dimensionless), nil if it has none.
    ///   - usesRSLoRA: whether the module scales were computed as `alpha / sqrt(rank)`.
    public init(name: String, modules: [ModuleKey: LoRAModule], alpha: Float?, usesRSLoRA: Bool = false) {
        self.name = name
        self.modules = modules
        self.alpha = alpha
        self.usesRSLoRA = usesRSLoRA
    }

    /// The largest module rank `r` (0 for an adapter without modules).
    public var rank: Int { modules.values.map(\.rank).max() ?? 0 }

    /// The projections patched in at least one layer, as llama.cpp names them (`Projection.rawValue`, e.g.
    /// `attn_q`, `ffn_down`), sorted.
    public var targets: [String] { Set(modules.keys.map(\.projection.rawValue)).sorted() }

    /// Bytes held by all modules.
    public var byteCount: Int { modules.values.reduce(0) { $0 + $1.byteCount } }
}

/// The adapters one request applies, each with a user scale (`y += userScale · module.scale · B·A·x`).
/// A class so rows that share the same set are recognised by identity and processed as one segment.
public final class AdapterSet: @unchecked Sendable {
    /// `(adapter, user scale)` pairs, applied in order.
    public let entries: [(adapter: LoRAAdapter, scale: Float)]

    /// - Parameter entries: adapters with their user scales (dimensionless; 0 disables an adapter).
    public init(_ entries: [(adapter: LoRAAdapter, scale: Float)]) { self.entries = entries }

    /// Convenience: one adapter at `scale`.
    public convenience init(_ adapter: LoRAAdapter, scale: Float = 1) { self.init([(adapter, scale)]) }
}

/// Adds the LoRA terms of one adapter module to a segment of rows: `y[m, n_out] += s · (x[m, n_in]·Aᵀ)·Bᵀ`,
/// with `s = userScale · module.scale`. Two `cblas_sgemm` calls (OpenBLAS), scratch `[m, rank]`.
/// - Parameters:
///   - x: input rows, row-major `[m, ldx]` with `ldx ≥ n_in`.
///   - y: output rows, row-major `[m, ldy]` with `ldy ≥ n_out`.
func applyLoRA(_ module: LoRAModule, userScale: Float, x: UnsafePointer<Float>, ldx: Int, m: Int,
               y: UnsafeMutablePointer<Float>, ldy: Int) {
    let r = module.rank
    guard m > 0, r > 0 else { return }
    let t = UnsafeMutablePointer<Float>.allocate(capacity: m * r)
    defer { t.deallocate() }
    module.a.withUnsafeBufferPointer { a in
        // t[m, r] = x[m, n_in] · Aᵀ  (A is [r, n_in] row-major)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(r), Int32(module.nIn),
                    1, x, Int32(ldx), a.baseAddress, Int32(module.nIn), 0, t, Int32(r))
    }
    module.b.withUnsafeBufferPointer { b in
        // y[m, n_out] += s · t[m, r] · Bᵀ  (B is [n_out, r] row-major)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(module.nOut), Int32(r),
                    userScale * module.scale, t, Int32(r), b.baseAddress, Int32(r), 1, y, Int32(ldy))
    }
}
