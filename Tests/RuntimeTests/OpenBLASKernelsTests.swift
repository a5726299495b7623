// OpenBLASKernels.preferredCoreType: which OPENBLAS_CORETYPE replaces the kernel set OpenBLAS chose
// (names from OpenBLAS driver/others/dynamic.c).
import Runtime
import Testing

struct OpenBLASKernelsTests {
    @Test func oldKernelSetsAreReplacedByTheWidestTheCPUEnables() {
        // Fallbacks of a library older than the CPU: generic SSE3 / SSE4 / AVX kernel sets.
        for old in ["Prescott", "Core2", "Nehalem", "Sandybridge", "Unknown", "Barcelona"] {
            #expect(OpenBLASKernels.preferredCoreType(coreName: old, vectorClass: 2) == "SkylakeX")
            #expect(OpenBLASKernels.preferredCoreType(coreName: old, vectorClass: 1) == "Haswell")
            #expect(OpenBLASKernels.preferredCoreType(coreName: old, vectorClass: 0) == nil)
        }
    }

    @Test func modernKernelSetsAreKept() {
        for modern in ["Haswell", "Zen", "SkylakeX", "Cooperlake", "CooperLake", "SapphireRapids", "skylakex"] {
            for cls in 0...2 { #expect(OpenBLASKernels.preferredCoreType(coreName: modern, vectorClass: cls) == nil) }
        }
    }
}
