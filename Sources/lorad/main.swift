// lorad: the daemon executable; everything lives in the Daemon library.
import Daemon
import Foundation
import Runtime

// Before anything else: if OpenBLAS loaded generic kernels on a CPU with AVX-512 / AVX2 (a CPU newer than the
// library), run again with OPENBLAS_CORETYPE set (at most once; see OpenBLASKernels).
OpenBLASKernels.reexecWithBetterKernelsIfNeeded { line in
    FileHandle.standardError.write(Data(("lorad: " + line + "\n").utf8))
}

await LoradCommand.runAsMain()
