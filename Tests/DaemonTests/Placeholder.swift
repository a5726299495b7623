import Testing
@Test func placeholder_DaemonTests() { #expect(1 + 1 == 2) }
