// A small, documented, checkpointable random generator for data shuffling and adapter initialisation:
// xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2018/2021,
// https://prng.di.unimi.it/xoshiro256starstar.c), seeded by SplitMix64 (Steele, Lea & Flood 2014) as the
// authors recommend. Bounded integers use Lemire's multiply-and-reject method (arXiv:1805.10941), so
// shuffles are unbiased; doubles take the top 53 bits.

/// xoshiro256** with its 256-bit state exposed for checkpoints.
public struct TrainingRNG: RandomNumberGenerator, Sendable, Equatable, Codable {
    /// The four state words; never all zero.
    public private(set) var state: [UInt64]

    /// Seeds the state with four SplitMix64 outputs of `seed`.
    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = [splitmix(), splitmix(), splitmix(), splitmix()]
    }

    /// Restores a saved state.
    /// - Returns: nil when `state` is not four words or is all zero (an invalid xoshiro state).
    public init?(state: [UInt64]) {
        guard state.count == 4, state.contains(where: { $0 != 0 }) else { return nil }
        self.state = state
    }

    @inline(__always) private static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = Self.rotl(state[1] &* 5, 7) &* 9
        let t = state[1] << 17
        state[2] ^= state[0]
        state[3] ^= state[1]
        state[1] ^= state[2]
        state[0] ^= state[3]
        state[2] ^= t
        state[3] = Self.rotl(state[3], 45)
        return result
    }

    /// Uniform in `0..<bound` (Lemire's unbiased method). - Precondition: `bound > 0`.
    public mutating func nextInt(below bound: UInt64) -> UInt64 {
        precondition(bound > 0)
        var m = next().multipliedFullWidth(by: bound)
        if m.low < bound {
            let threshold = (0 &- bound) % bound
            while m.low < threshold { m = next().multipliedFullWidth(by: bound) }
        }
        return m.high
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    public mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in `[-bound, bound)`, computed in f64 and rounded to f32.
    public mutating func uniform(bound: Float) -> Float { Float((nextDouble() * 2 - 1) * Double(bound)) }

    /// A uniformly random permutation of `0..<n` (Fisher–Yates, from the last position down).
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        if n > 1 {
            for i in stride(from: n - 1, to: 0, by: -1) {
                let j = Int(nextInt(below: UInt64(i + 1)))
                p.swapAt(i, j)
            }
        }
        return p
    }
}

/// Where a run is in its data: the epoch, this epoch's order of example indices, and the next position.
/// Each epoch's order is a fresh permutation drawn from the run's `TrainingRNG`, so (order, RNG state) in a
/// checkpoint resume the exact same sequence of batches.
public struct DataOrder: Sendable, Equatable, Codable {
    /// 0-based epoch.
    public var epoch: Int
    /// This epoch's order of example indices (a permutation of `0..<count`).
    public var permutation: [Int]
    /// Next position in `permutation`.
    public var cursor: Int

    /// The first epoch's order for `count` examples (shuffled with `rng` when `shuffle`).
    public init(count: Int, shuffle: Bool, rng: inout TrainingRNG) {
        epoch = 0
        permutation = shuffle ? rng.permutation(count) : Array(0..<count)
        cursor = 0
    }

    /// - Parameters: see the properties.
    public init(epoch: Int, permutation: [Int], cursor: Int) {
        self.epoch = epoch
        self.permutation = permutation
        self.cursor = cursor
    }

    /// Whether `permutation` is a permutation of `0..<count` and `cursor` lies within it.
    public func isValid(count: Int) -> Bool {
        guard permutation.count == count, cursor >= 0, cursor <= count else { return false }
        var seen = [Bool](repeating: false, count: count)
        for i in permutation {
            guard i >= 0, i < count, !seen[i] else { return false }
            seen[i] = true
        }
        return true
    }

    /// The next `batchSize` example indices; at the end of an epoch a new epoch starts with a new order (drawn
    /// from `rng` when `shuffle`), so a batch may span two epochs. - Precondition: the order is not empty.
    public mutating func nextBatch(_ batchSize: Int, shuffle: Bool, rng: inout TrainingRNG) -> [Int] {
        precondition(!permutation.isEmpty, "no examples")
        var out: [Int] = []
        while out.count < batchSize {
            if cursor == permutation.count {
                epoch += 1
                cursor = 0
                permutation = shuffle ? rng.permutation(permutation.count) : Array(0..<permutation.count)
            }
            out.append(permutation[cursor])
            cursor += 1
        }
        return out
    }
}
