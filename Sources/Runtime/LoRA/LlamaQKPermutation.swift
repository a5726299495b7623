// The row order llama.cpp's converter gives the query and key projections of llama-architecture models, and the
// same reordering for the lora_B factors of adapters trained on the Hugging Face layout.
//
// Source: llama.cpp convert_hf_to_gguf.py, `LlamaModel.permute(weights, n_head, n_head_kv)`:
//     weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2)
// applied to q_proj with n_head and to k_proj with n_head_kv (convert_lora_to_gguf.py applies it to lora_B, the
// factor whose rows are the projection's rows). Hugging Face's Llama rotates the two halves of each head
// (`rotate_half`: pairs (i, i + head_dim/2)); ggml's "normal" RoPE rotates adjacent rows (2i, 2i + 1), and the
// permutation makes the two agree. Gemma's converter does not permute (Gemma's GGUF uses NeoX RoPE), so this applies
// to `general.architecture = llama` only.
//
// Within one head of `head_dim` rows: Hugging Face row `j·(head_dim/2) + i` (half j ∈ {0, 1}, pair i) is GGUF row
// `2·i + j`. Since ΔW = B·A, permuting the rows of ΔW is permuting the rows of B; lora_A is unchanged.

/// llama.cpp's Q/K row permutation for llama-architecture GGUF files (convert_hf_to_gguf.py `LlamaModel.permute`).
///
/// `hfToGGUF` turns a PEFT `q_proj`/`k_proj` lora_B (Hugging Face layout) into the layout of the GGUF base weight;
/// `ggufToHF` is its inverse, for exporting an adapter trained on a llama GGUF to PEFT. Use `nHead = n_head` for Q
/// and `nHead = n_head_kv` for K.
public enum LlamaQKPermutation {
    /// Whether a matrix of `rows` rows can be split into `nHead` heads of an even `head_dim`.
    public static func canPermute(rows: Int, nHead: Int) -> Bool {
        nHead > 0 && rows > 0 && rows % nHead == 0 && (rows / nHead) % 2 == 0
    }

    /// The GGUF row that Hugging Face row `row` becomes, for heads of `headDim` rows (even).
    /// - Returns: `h·head_dim + 2·i + j` for `row = h·head_dim + j·(head_dim/2) + i`.
    public static func ggufRow(ofHFRow row: Int, headDim: Int) -> Int {
        let half = headDim / 2
        let h = row / headDim, r = row % headDim
        return h * headDim + 2 * (r % half) + r / half
    }

    /// Reorders the rows of a row-major matrix `[rows, cols]` from the Hugging Face layout to the GGUF layout.
    /// - Parameters: m: `[rows, cols]` row-major (`m.count == rows·cols`); nHead: heads the rows span
    ///   (n_head for Q, n_head_kv for K).
    /// - Precondition: `canPermute(rows:nHead:)` and `m.count == rows·cols` (loaders check shapes first).
    public static func hfToGGUF(_ m: [Float], rows: Int, cols: Int, nHead: Int) -> [Float] {
        reorder(m, rows: rows, cols: cols, nHead: nHead, toGGUF: true)
    }

    /// The inverse of `hfToGGUF`: GGUF row order back to the Hugging Face order (for a PEFT export of an adapter
    /// trained on a llama GGUF). Same parameters and precondition.
    public static func ggufToHF(_ m: [Float], rows: Int, cols: Int, nHead: Int) -> [Float] {
        reorder(m, rows: rows, cols: cols, nHead: nHead, toGGUF: false)
    }

    private static func reorder(_ m: [Float], rows: Int, cols: Int, nHead: Int, toGGUF: Bool) -> [Float] {
        precondition(canPermute(rows: rows, nHead: nHead) && m.count == rows * cols, "Q/K permutation shape mismatch")
        let headDim = rows / nHead
        var out = [Float](repeating: 0, count: m.count)
        for hf in 0..<rows {
            let gguf = ggufRow(ofHFRow: hf, headDim: headDim)
            let (src, dst) = toGGUF ? (hf, gguf) : (gguf, hf)
            for c in 0..<cols { out[dst * cols + c] = m[src * cols + c] }
        }
        return out
    }
}
