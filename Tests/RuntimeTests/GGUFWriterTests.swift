// GGUFWriter: round trips through GGUFFile, byte-for-byte equality with files written by the gguf Python
// package (gguf 0.19.0 GGUFWriter) for the same content, and gguf.GGUFReader reading files written here.

import Foundation
import Testing

import Runtime

@Suite("GGUF writer")
struct GGUFWriterTests {
    static func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "lorad-gguf-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Content with every value kind and tensors whose sizes need padding.
    static func sampleWriter(alignment: Int = 32) throws -> GGUFWriter {
        var w = GGUFWriter(alignment: alignment)
        w.set("general.architecture", .string("llama"))
        w.set("general.name", .string("sample \u{2713}"))
        w.set("x.u8", .uint8(9)); w.set("x.i8", .int8(-9)); w.set("x.u16", .uint16(900)); w.set("x.i16", .int16(-900))
        w.set("x.u32", .uint32(90_000)); w.set("x.i32", .int32(-90_000)); w.set("x.f32", .float32(-0.0))
        w.set("x.bool", .bool(false)); w.set("x.u64", .uint64(1 << 60)); w.set("x.i64", .int64(-(1 << 60)))
        w.set("x.f64", .float64(.pi))
        w.set("tokenizer.ggml.tokens", .array(["<s>", "</s>", "\u{2581}x", ""].map { .string($0) }))
        w.set("tokenizer.ggml.scores", .array([0, 0, -1, -2].map { .float32($0) }))
        w.set("x.nested", .array([.array([.int8(1)]), .array([.array([.string("deep")])])]))
        w.set("x.empty", .array([]))
        try w.addTensor(name: "a", dims: [3], floats: [1, -2, 3.5])
        try w.addTensor(name: "b", type: .q8_0, dims: [32, 3], data: (0..<102).map { UInt8($0) })
        try w.addTensor(name: "c", type: .f16, dims: [2, 2, 2, 1], data: (0..<16).map { UInt8(255 - $0) })
        return w
    }

    @Test func roundTripThroughTheReader() throws {
        let bytes = try Self.sampleWriter().serialized()
        let f = try GGUFFile(bytes: bytes)
        #expect(f.version == 3 && f.alignment == 32)
        #expect(f.metadataKeys == ["general.architecture", "general.name", "x.u8", "x.i8", "x.u16", "x.i16", "x.u32", "x.i32",
                                   "x.f32", "x.bool", "x.u64", "x.i64", "x.f64", "tokenizer.ggml.tokens",
                                   "tokenizer.ggml.scores", "x.nested", "x.empty"])
        #expect(f.metadata["general.alignment"] == nil)  // default alignment: no key, as gguf-py
        #expect(f.metadata["x.f32"].map { ggufBitwiseEqual($0, .float32(-0.0)) } == true)
        #expect(f.metadata["x.f64"] == .float64(.pi))
        #expect(f.metadata["x.u64"] == .uint64(1 << 60))
        #expect(f.metadata["x.nested"] == .array([.array([.int8(1)]), .array([.array([.string("deep")])])]))
        #expect(f.metadata["x.empty"] == .array([]))
        #expect(f.stringArray("tokenizer.ggml.tokens") == ["<s>", "</s>", "\u{2581}x", ""])
        #expect(f.tensors.map(\.name) == ["a", "b", "c"])
        #expect(f.tensors.map(\.dims) == [[3], [32, 3], [2, 2, 2, 1]])
        #expect(f.tensors.map(\.type) == [.f32, .q8_0, .f16])
        // Offsets: a (12 bytes) at 0, b (102 bytes) at 32, c at 32 + 128 = 160, all relative to the data section.
        #expect(f.tensors.map { $0.dataOffset - f.dataSectionOffset } == [0, 32, 160])
        #expect(f.dataSectionOffset % 32 == 0)
        #expect(Array(f.data(of: f.tensors[0]).bindMemory(to: Float.self)) == [1, -2, 3.5])
        #expect(Array(f.data(of: f.tensors[1])) == (0..<102).map { UInt8($0) })
        #expect(Array(f.data(of: f.tensors[2])) == (0..<16).map { UInt8(255 - $0) })
        #expect(bytes.count == f.dataSectionOffset + 160 + 32)  // the last tensor is padded too
    }

    @Test func nonDefaultAlignmentIsWrittenAsKey() throws {
        let f = try GGUFFile(bytes: try Self.sampleWriter(alignment: 128).serialized())
        #expect(f.alignment == 128)
        #expect(f.metadata["general.alignment"] == .uint32(128))
        #expect(f.metadataKeys.last == "general.alignment")
        #expect(f.tensors.allSatisfy { ($0.dataOffset - f.dataSectionOffset) % 128 == 0 })
        #expect(f.dataSectionOffset % 128 == 0)
    }

    @Test func settingAKeyAgainKeepsItsPosition() throws {
        var w = GGUFWriter()
        w.set("a", .uint8(1)); w.set("b", .uint8(2)); w.set("a", .string("new"))
        let f = try GGUFFile(bytes: w.serialized())
        #expect(f.metadataKeys == ["a", "b"])
        #expect(f.metadata["a"] == .string("new"))
    }

    @Test func invalidTensorsAreRejected() throws {
        var w = GGUFWriter()
        try w.addTensor(name: "t", dims: [2], floats: [1, 2])
        #expect(throws: GGUFError.self) { try w.addTensor(name: "t", dims: [2], floats: [1, 2]) }  // duplicate
        #expect(throws: GGUFError.self) { try w.addTensor(name: "", dims: [1], floats: [1]) }
        #expect(throws: GGUFError.self) { try w.addTensor(name: "u", dims: [3], floats: [1, 2]) }  // wrong size
        #expect(throws: GGUFError.self) { try w.addTensor(name: "u", dims: [], floats: []) }
        #expect(throws: GGUFError.self) { try w.addTensor(name: "u", dims: [1, 1, 1, 1, 1], floats: [1]) }
        #expect(throws: GGUFError.self) { try w.addTensor(name: "u", dims: [0], floats: []) }
        #expect(throws: GGUFError.self) {
            try w.addTensor(name: "u", type: .q8_0, dims: [16, 2], data: [UInt8](repeating: 0, count: 34))
        }
        #expect(throws: GGUFError.self) {
            try w.addTensor(name: "u", type: .q4_K, dims: [Int.max / 2 + 1, 4], data: [])
        }
        // The failed calls left the writer unchanged.
        #expect(try GGUFFile(bytes: w.serialized()).tensors.map(\.name) == ["t"])
    }

    @Test func seededRandomContentRoundTrips() throws {
        var rng = GGUFTestRNG(state: 42)
        func scalar() -> GGUFValue {
            switch Int.random(in: 0..<12, using: &rng) {
            case 0: return .uint8(.random(in: .min ... .max, using: &rng))
            case 1: return .int8(.random(in: .min ... .max, using: &rng))
            case 2: return .uint16(.random(in: .min ... .max, using: &rng))
            case 3: return .int16(.random(in: .min ... .max, using: &rng))
            case 4: return .uint32(.random(in: .min ... .max, using: &rng))
            case 5: return .int32(.random(in: .min ... .max, using: &rng))
            case 6: return .float32(Float(bitPattern: .random(in: 0...0x7F7F_FFFF, using: &rng)))
            case 7: return .bool(.random(using: &rng))
            case 8: return .string(String((0..<Int.random(in: 0...12, using: &rng)).map { _ in
                Character(Unicode.Scalar(UInt32.random(in: 0x20...0x2FFF, using: &rng)) ?? "?") }))
            case 9: return .uint64(.random(in: .min ... .max, using: &rng))
            case 10: return .int64(.random(in: .min ... .max, using: &rng))
            default: return .float64(Double(bitPattern: .random(in: 0...0x7FEF_FFFF_FFFF_FFFF, using: &rng)))
            }
        }
        func homogeneousArray(depth: Int) -> GGUFValue {
            let n = Int.random(in: 1...6, using: &rng)
            if depth < 3, Int.random(in: 0..<4, using: &rng) == 0 {
                return .array((0..<n).map { _ in homogeneousArray(depth: depth + 1) })
            }
            let first = scalar()
            return .array([first] + (1..<n).map { _ in
                var v = scalar()
                while v.type != first.type { v = scalar() }
                return v
            })
        }
        let types: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .i8, .i32]
        for _ in 0..<150 {
            var w = GGUFWriter(alignment: 1 << Int.random(in: 0...8, using: &rng))
            var expected: [(String, GGUFValue)] = []
            for k in 0..<Int.random(in: 0...10, using: &rng) {
                let v = Bool.random(using: &rng) ? scalar() : homogeneousArray(depth: 1)
                w.set("k\(k)", v)
                expected.append(("k\(k)", v))
            }
            var tensors: [(String, GGMLType, [Int], [UInt8])] = []
            for t in 0..<Int.random(in: 0...5, using: &rng) {
                let type = types.randomElement(using: &rng)!
                var dims = [type.blockSize * Int.random(in: 1...3, using: &rng)]
                for _ in 0..<Int.random(in: 0...3, using: &rng) { dims.append(Int.random(in: 1...3, using: &rng)) }
                let n = dims.reduce(1, *) / type.blockSize * type.typeSize
                let data = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                try w.addTensor(name: "t\(t)", type: type, dims: dims, data: data)
                tensors.append(("t\(t)", type, dims, data))
            }
            let f = try GGUFFile(bytes: w.serialized())
            let keys = f.metadataKeys.filter { $0 != "general.alignment" }
            #expect(keys == expected.map(\.0))
            for (k, v) in expected { #expect(f.metadata[k].map { ggufBitwiseEqual($0, v) } == true, "\(k)") }
            #expect(f.alignment == w.alignment)
            #expect(f.tensors.count == tensors.count)
            for (t, e) in zip(f.tensors, tensors) {
                #expect(t.name == e.0 && t.type == e.1 && t.dims == e.2)
                #expect(Array(f.data(of: t)) == e.3)
            }
        }
    }

    // MARK: - Atomic write

    @Test func writeToPathThenReadBack() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/model.gguf"
        let w = try Self.sampleWriter()
        try w.write(to: path)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) == w.serialized())
        let f = try GGUFFile(path: path)
        #expect(f.tensors.count == 3 && f.architecture == "llama")

        // Replacing the file: the mapped old version stays readable, the path shows the new one, and no
        // temporary file is left behind.
        var w2 = GGUFWriter()
        w2.set("general.architecture", .string("gemma3"))
        try w2.write(to: path)
        #expect(Array(f.data(of: f.tensors[1])) == (0..<102).map { UInt8($0) })
        #expect(try GGUFFile(path: path).architecture == "gemma3")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["model.gguf"])
    }

    @Test func writeIntoMissingDirectoryThrowsIO() throws {
        let path = "/nonexistent-\(UInt32.random(in: 0...UInt32.max))/x.gguf"
        guard case .io(let operation, _, let code) = #expect(throws: GGUFError.self, performing: {
            try GGUFWriter().write(to: path)
        }) else {
            Issue.record("expected an io error"); return
        }
        #expect(operation == "open" && code == ENOENT)
    }

    // MARK: - Independence from the implementation: the gguf Python package

    /// Rebuilds the fixture's content from its JSON with GGUFWriter: the bytes must equal gguf-py's file.
    @Test(arguments: ["python_written", "python_written_align64"])
    func sameBytesAsGGUFPyWriter(_ stem: String) throws {
        let json = try GGUFTypedJSON.load(GGUFTestPaths.fixtures.appendingPathComponent("\(stem).json"))
        var w = GGUFWriter(alignment: json["alignment"] as! Int)
        for entry in json["metadata"] as! [[String: Any]] {
            w.set(entry["key"] as! String, try GGUFTypedJSON.value(entry))
        }
        for t in json["tensors"] as! [[String: Any]] {
            let type = try #require(GGMLType(rawValue: UInt32(t["type"] as! Int)))
            try w.addTensor(name: t["name"] as! String, type: type, dims: t["dims"] as! [Int],
                            data: GGUFTypedJSON.hex(t["data_hex"] as! String))
        }
        let expected = [UInt8](try Data(contentsOf: GGUFTestPaths.fixtures.appendingPathComponent("\(stem).gguf")))
        let ours = w.serialized()
        #expect(ours.count == expected.count)
        let firstDifference = zip(ours, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstDifference == nil, "first differing byte at \(firstDifference ?? -1)")
    }

    static let pythonGGUFAvailable: Bool = {
        guard let (status, _) = try? runPython(["-c", "import gguf, importlib.metadata as m; assert m.version('gguf') == '0.19.0'"]) else {
            return false
        }
        return status == 0
    }()

    /// The Python with gguf-py: the venv scripts/setup.sh installs it into ($LORAD_VENV, else
    /// ~/.local/share/lorad/venv), else `python3` on PATH.
    static var pythonCommand: [String] {
        let env = ProcessInfo.processInfo.environment
        let venv = env["LORAD_VENV"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["HOME"] ?? NSHomeDirectory()) + "/.local/share/lorad/venv"
        let python = venv + "/bin/python3"
        return FileManager.default.isExecutableFile(atPath: python) ? [python] : ["/usr/bin/env", "python3"]
    }

    static func runPython(_ arguments: [String]) throws -> (Int32, Data) {
        let p = Process()
        let command = pythonCommand
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst()) + arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, data)
    }

    /// gguf.GGUFReader reads a file written here and sees exactly the content that was written.
    @Test(.enabled(if: pythonGGUFAvailable, "needs gguf==0.19.0 in the venv of scripts/setup.sh or in python3"))
    func ggufPyReaderReadsOurFile() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ours.gguf"
        let w = try Self.sampleWriter(alignment: 64)
        try w.write(to: path)
        let script = GGUFTestPaths.repositoryRoot.appendingPathComponent("scripts/make_gguf_fixtures.py").path
        let (status, output) = try Self.runPython([script, "--dump", path])
        #expect(status == 0)
        let view = try #require(try JSONSerialization.jsonObject(with: output) as? [String: Any])
        #expect(view["version"] as? Int == 3)
        #expect(view["alignment"] as? Int == 64)
        let f = try GGUFFile(bytes: w.serialized())  // what we wrote, as our reader sees it
        #expect(view["data_section_offset"] as? Int == f.dataSectionOffset)
        let metadata = view["metadata"] as! [[String: Any]]
        #expect(metadata.map { $0["key"] as! String } == f.metadataKeys)
        let written: [String: GGUFValue] = [
            "general.architecture": .string("llama"), "general.name": .string("sample \u{2713}"),
            "x.u8": .uint8(9), "x.i8": .int8(-9), "x.u16": .uint16(900), "x.i16": .int16(-900),
            "x.u32": .uint32(90_000), "x.i32": .int32(-90_000), "x.f32": .float32(-0.0), "x.bool": .bool(false),
            "x.u64": .uint64(1 << 60), "x.i64": .int64(-(1 << 60)), "x.f64": .float64(.pi),
            "tokenizer.ggml.tokens": .array(["<s>", "</s>", "\u{2581}x", ""].map { .string($0) }),
            "tokenizer.ggml.scores": .array([0, 0, -1, -2].map { .float32($0) }),
            "x.nested": .array([.array([.int8(1)]), .array([.array([.string("deep")])])]),
            "x.empty": .array([]), "general.alignment": .uint32(64),
        ]
        for entry in metadata {
            let key = entry["key"] as! String
            let expected = try #require(written[key], "unexpected key \(key)")
            #expect(ggufBitwiseEqual(try GGUFTypedJSON.value(entry), expected), "\(key)")
        }
        let tensors = view["tensors"] as! [[String: Any]]
        #expect(tensors.map { $0["name"] as! String } == ["a", "b", "c"])
        #expect(tensors.map { $0["dims"] as! [Int] } == [[3], [32, 3], [2, 2, 2, 1]])
        #expect(tensors.map { $0["type"] as! Int } == [0, 8, 1])
        var floats = RawGGUF()
        floats.f32(1); floats.f32(-2); floats.f32(3.5)
        let expectedData: [[UInt8]] = [floats.bytes, (0..<102).map { UInt8($0) }, (0..<16).map { UInt8(255 - $0) }]
        let pythonData: [[UInt8]] = tensors.map { GGUFTypedJSON.hex($0["data_hex"] as! String) }
        #expect(pythonData == expectedData)
        #expect(tensors.map { $0["data_offset"] as! Int } == f.tensors.map(\.dataOffset))
    }
}
