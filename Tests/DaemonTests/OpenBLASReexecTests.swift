// lorad re-executes itself once with OPENBLAS_CORETYPE set when OpenBLAS loaded an old kernel set on a CPU with
// AVX-512 or AVX2 (Runtime/Quant/OpenBLASKernels.swift), and never when the variable is already set.
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct OpenBLASReexecTests {
    /// Runs `lorad --help` with `environment`; returns exit status and stderr.
    static func runHelp(environment: [String: String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Paths.loradBinary())
        p.arguments = ["--help"]
        p.environment = environment
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func atMostOneReexecAndAModernKernelSetAfterIt() throws {
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = nil
        let (status, stderr) = try Self.runHelp(environment: env)
        #expect(status == 0)
        let lines = stderr.split(separator: "\n").filter { $0.contains("OpenBLAS kernel set") }
        #expect(lines.count <= 1, "\(lines)")
        if let line = lines.first {
            // "OpenBLAS kernel set <new> (OPENBLAS_CORETYPE=<new>); the library alone chose <old> on this CPU"
            print("lorad: \(line)")
            #expect(line.contains("OPENBLAS_CORETYPE=SkylakeX") || line.contains("OPENBLAS_CORETYPE=Haswell"))
            #expect(!line.contains("set Prescott"))
        }
    }

    @Test func noReexecWhenTheVariableIsSet() throws {
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = "Prescott"
        let (status, stderr) = try Self.runHelp(environment: env)
        #expect(status == 0)
        #expect(!stderr.contains("OpenBLAS kernel set"))
    }
}
