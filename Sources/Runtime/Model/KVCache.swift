// KVCache: per-sequence key/value storage for every layer. Sliding-window layers keep only their window
// (a ring of `window` positions); full-attention layers grow on demand up to `capacity`.

/// Element type of the KV cache.
public enum KVCacheType: String, Sendable, CaseIterable {
    /// IEEE binary16, 2 bytes per value (default, as llama.cpp).
    case f16
    /// binary32, 4 bytes per value.
    case f32

    /// Bytes per stored value.
    public var bytesPerValue: Int { self == .f16 ? 2 : 4 }
}

/// Keys and values of one sequence for every layer.
///
/// Layer `l` stores K and V rows of `kv_dim = n_head_kv * head_dim` values per position. Layers with a sliding
/// window of `W` tokens keep positions in a ring of `min(W, capacity)` slots (slot = position % W); others keep
/// every position, growing their storage geometrically. Not thread-safe: owned by the compute thread.
public final class KVCache: @unchecked Sendable {
    /// Maximum number of tokens this sequence may hold, in tokens.
    public let capacity: Int
    /// Element type of the stored keys and values.
    public let type: KVCacheType
    /// Number of positions written so far (the next position to feed), in tokens.
    public private(set) var count: Int = 0

    let kvDim: Int
    let layers: [LayerStore]

    final class LayerStore {
        let ring: Bool
        var slots: Int
        let maxSlots: Int
        var k: UnsafeMutableRawPointer
        var v: UnsafeMutableRawPointer
        let rowBytes: Int

        init(ring: Bool, slots: Int, maxSlots: Int, rowBytes: Int) {
            self.ring = ring
            self.slots = slots
            self.maxSlots = maxSlots
            self.rowBytes = rowBytes
            k = UnsafeMutableRawPointer.allocate(byteCount: max(1, slots * rowBytes), alignment: 64)
            v = UnsafeMutableRawPointer.allocate(byteCount: max(1, slots * rowBytes), alignment: 64)
        }

        deinit {
            k.deallocate()
            v.deallocate()
        }

        /// Makes room for `position` in a growing (non-ring) layer.
        func reserve(position: Int) {
            guard !ring, position >= slots else { return }
            var newSlots = max(slots, 64)
            while newSlots <= position { newSlots *= 2 }
            newSlots = min(newSlots, maxSlots)
            let nk = UnsafeMutableRawPointer.allocate(byteCount: newSlots * rowBytes, alignment: 64)
            let nv = UnsafeMutableRawPointer.allocate(byteCount: newSlots * rowBytes, alignment: 64)
            nk.copyMemory(from: k, byteCount: slots * rowBytes)
            nv.copyMemory(from: v, byteCount: slots * rowBytes)
            k.deallocate()
            v.deallocate()
            k = nk
            v = nv
            slots = newSlots
        }

        @inline(__always) func slot(_ position: Int) -> Int { ring ? position % slots : position }
        @inline(__always) func keyRow(_ position: Int) -> UnsafeMutableRawPointer { k + slot(position) * rowBytes }
        @inline(__always) func valueRow(_ position: Int) -> UnsafeMutableRawPointer { v + slot(position) * rowBytes }
    }

    /// Creates an empty cache.
    /// - Parameters:
    ///   - config: the model's hyperparameters (layer count, `kv_dim`, window per layer).
    ///   - capacity: maximum tokens, ≥ 1.
    ///   - type: element type.
    public init(config: ModelConfig, capacity: Int, type: KVCacheType = .f16) {
        self.capacity = max(1, capacity)
        self.type = type
        self.kvDim = config.kvDim
        let rowBytes = config.kvDim * type.bytesPerValue
        var stores: [LayerStore] = []
        for l in 0..<config.nLayer {
            if config.layerUsesSlidingWindow[l], let w = config.slidingWindow, w < self.capacity {
                stores.append(LayerStore(ring: true, slots: w, maxSlots: w, rowBytes: rowBytes))
            } else {
                stores.append(LayerStore(ring: false, slots: min(self.capacity, 64), maxSlots: self.capacity, rowBytes: rowBytes))
            }
        }
        layers = stores
    }

    /// Bytes currently allocated for keys and values.
    public var byteCount: Int { layers.reduce(0) { $0 + 2 * $1.slots * $1.rowBytes } }

    /// Forgets every position (storage is kept).
    public func reset() { count = 0 }

    /// Drops positions from `newCount` on, keeping `[0, newCount)`.
    /// Sliding-window layers cannot restore positions already overwritten in their ring, so once a ring has
    /// wrapped only the last position may be dropped.
    /// - Returns: false when the truncation is not possible.
    @discardableResult
    public func truncate(to newCount: Int) -> Bool {
        guard newCount >= 0, newCount <= count else { return false }
        for store in layers where store.ring {
            // The ring holds [count - slots, count); the next position needs [newCount - slots + 1, newCount).
            if count > store.slots && newCount < count - 1 { return false }
        }
        count = newCount
        return true
    }

    func advance(by n: Int) { count += n }
}
