// OpenBLAS's kernel set. OpenBLAS (DYNAMIC_ARCH builds, as Debian's) picks its kernels once, when the library loads,
// from the CPU model; a CPU newer than the library (Debian 12's 0.3.21 on a Sapphire Rapids Xeon) falls back to
// "Prescott", SSE3 kernels whose sgemm is several times slower than the AVX-512 ones. The only switch is the
// environment variable OPENBLAS_CORETYPE, read by the library's constructor before `main`; so a process that finds an
// old kernel set on a CPU with AVX-512 (or AVX2 + FMA) sets it and executes itself again, once.
// Kernel set names: OpenBLAS driver/others/dynamic.c (`corename`, `force_coretype`).
import CKernels
import COpenBLAS
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The kernel set OpenBLAS runs and the re-exec that corrects it on CPUs the library does not recognise.
public enum OpenBLASKernels {
    /// The kernel set OpenBLAS chose at load time (`openblas_get_corename`, e.g. "SkylakeX", "Haswell", "Prescott").
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// Kernel sets with AVX2 + FMA sgemm (or wider); any other name is a generic or pre-AVX2 fallback.
    static let modernCores: Set<String> = ["haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"]

    /// The `OPENBLAS_CORETYPE` that should replace `coreName`, or nil when it is already a modern kernel set or the
    /// CPU offers nothing better.
    /// - Parameters:
    ///   - coreName: what `openblas_get_corename` reports (compared case-insensitively).
    ///   - vectorClass: `ck_cpu_vector_class()`: 2 = AVX-512 F/BW/VL/DQ enabled by CPU and OS, 1 = AVX2 + FMA, 0 = neither.
    /// - Returns: "SkylakeX" for class 2, "Haswell" for class 1, when `coreName` is not modern; else nil.
    public static func preferredCoreType(coreName: String, vectorClass: Int) -> String? {
        if modernCores.contains(coreName.lowercased()) { return nil }
        switch vectorClass {
        case 2...: return "SkylakeX"
        case 1: return "Haswell"
        default: return nil
        }
    }

    /// Marker left for the re-executed process: the kernel set the first process had (for the one log line).
    static let previousCoreVariable = "LORAD_OPENBLAS_PREVIOUS_CORE"

    /// Call first thing in an executable's `main`. When `OPENBLAS_CORETYPE` is unset and `preferredCoreType` names a
    /// better kernel set, sets `OPENBLAS_CORETYPE` to it and replaces the process with the same binary
    /// (`/proc/self/exe`, same arguments, pid and file descriptors; so systemd's socket activation and watchdog are
    /// unaffected). The variable is then set, so the new process never re-executes again: at most one exec, even
    /// when the library ignores the variable. In the new process, `log` receives one line naming the kernel set
    /// before and after. If the exec fails, the process continues with the kernels it has and `log` says why.
    /// - Parameter log: receives a one-line message (e.g. written to stderr).
    public static func reexecWithBetterKernelsIfNeeded(log: (String) -> Void) {
        let env = ProcessInfo.processInfo.environment
        if let previous = env[previousCoreVariable] {
            unsetenv(previousCoreVariable)
            log("OpenBLAS kernel set \(coreName) (OPENBLAS_CORETYPE=\(env["OPENBLAS_CORETYPE"] ?? "")); the library alone chose \(previous) on this CPU")
            return
        }
        guard env["OPENBLAS_CORETYPE"] == nil else { return }
        let current = coreName
        guard let better = preferredCoreType(coreName: current, vectorClass: Int(ck_cpu_vector_class())) else { return }
        setenv("OPENBLAS_CORETYPE", better, 1)
        setenv(previousCoreVariable, current, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // Only reached when exec failed: keep running with the kernels already loaded.
        let reason = String(cString: strerror(errno))
        unsetenv(previousCoreVariable)
        log("OpenBLAS kernel set \(current); restarting with OPENBLAS_CORETYPE=\(better) failed (\(reason)), continuing")
    }
}
