import Testing
import Train

/// The Train target links against Runtime (the base model it trains on).
@Test func trainTargetBuilds() {
    #expect(Bool(true))
}
