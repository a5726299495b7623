// GGUFFile reading: hand-built files (expected values are what the test wrote), files written by the gguf
// Python package (expected values from scripts/make_gguf_fixtures.py's inputs), and the default model (facts
// from ../shared/reference/gemma-3-270m-q4_k_m/README.md and gguf.GGUFReader's committed view of the file).

import Foundation
import Testing

import Runtime

@Suite("GGUF reader")
struct GGUFReaderTests {
    // MARK: - Hand-built files

    /// Every scalar type, strings, arrays of each kind, nested arrays; one F32 and one Q8_0 tensor.
    static func everyTypeFile(version: UInt32) -> (bytes: [UInt8], dataStart: Int) {
        var r = RawGGUF()
        r.header(version: version, tensors: 2, kvs: 19)
        r.key("general.architecture", type: GGUFTag.string); r.str("llama")
        r.key("u8", type: GGUFTag.u8); r.u8(250)
        r.key("i8", type: GGUFTag.i8); r.i8(-7)
        r.key("u16", type: GGUFTag.u16); r.u16(65000)
        r.key("i16", type: GGUFTag.i16); r.i16(-32000)
        r.key("u32", type: GGUFTag.u32); r.u32(4_000_000_000)
        r.key("i32", type: GGUFTag.i32); r.i32(-2_000_000_000)
        r.key("f32", type: GGUFTag.f32); r.f32(1.5)
        r.key("bool", type: GGUFTag.bool); r.u8(1)
        r.key("string", type: GGUFTag.string); r.str("caf\u{E9} \u{1F600}")
        r.key("u64", type: GGUFTag.u64); r.u64(UInt64.max)
        r.key("i64", type: GGUFTag.i64); r.i64(Int64.min)
        r.key("f64", type: GGUFTag.f64); r.f64(-0.1)
        r.key("tokenizer.ggml.tokens", type: GGUFTag.array); r.u32(GGUFTag.string); r.u64(4)
        r.str("<unk>"); r.str(""); r.str("\u{2581}the"); r.str("\u{65E5}\u{672C}")
        r.key("tokenizer.ggml.scores", type: GGUFTag.array); r.u32(GGUFTag.f32); r.u64(4)
        r.f32(0); r.f32(-1); r.f32(-2.5); r.f32(3)
        r.key("tokenizer.ggml.token_type", type: GGUFTag.array); r.u32(GGUFTag.i32); r.u64(4)
        r.i32(2); r.i32(1); r.i32(1); r.i32(6)
        r.key("bools", type: GGUFTag.array); r.u32(GGUFTag.bool); r.u64(2); r.u8(0); r.u8(1)
        r.key("nested", type: GGUFTag.array); r.u32(GGUFTag.array); r.u64(2)
        r.u32(GGUFTag.u64); r.u64(1); r.u64(1 << 40)
        r.u32(GGUFTag.string); r.u64(2); r.str("x"); r.str("y")
        r.key("empty", type: GGUFTag.array); r.u32(GGUFTag.f64); r.u64(0)
        r.tensorInfo("norm", dims: [3], type: GGMLTypeID.f32, offset: 0)
        r.tensorInfo("w", dims: [32, 2], type: GGMLTypeID.q8_0, offset: 32)
        r.pad(to: 32)
        let dataStart = r.count
        r.f32(1); r.f32(2); r.f32(3)
        r.zeros(20)
        r.bytes += (0..<68).map { UInt8($0) }
        return (r.bytes, dataStart)
    }

    @Test func readsEveryValueType() throws {
        let (bytes, _) = Self.everyTypeFile(version: 3)
        let f = try GGUFFile(bytes: bytes)
        #expect(f.version == 3)
        #expect(f.alignment == 32)
        #expect(f.fileSize == bytes.count)
        #expect(f.metadataKeys == ["general.architecture", "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string",
                                   "u64", "i64", "f64", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                   "tokenizer.ggml.token_type", "bools", "nested", "empty"])
        #expect(f.metadata["u8"] == .uint8(250))
        #expect(f.metadata["i8"] == .int8(-7))
        #expect(f.metadata["u16"] == .uint16(65000))
        #expect(f.metadata["i16"] == .int16(-32000))
        #expect(f.metadata["u32"] == .uint32(4_000_000_000))
        #expect(f.metadata["i32"] == .int32(-2_000_000_000))
        #expect(f.metadata["f32"] == .float32(1.5))
        #expect(f.metadata["bool"] == .bool(true))
        #expect(f.metadata["string"] == .string("caf\u{E9} \u{1F600}"))
        #expect(f.metadata["u64"] == .uint64(UInt64.max))
        #expect(f.metadata["i64"] == .int64(Int64.min))
        #expect(f.metadata["f64"] == .float64(-0.1))
        #expect(f.metadata["bools"] == .array([.bool(false), .bool(true)]))
        #expect(f.metadata["nested"] == .array([.array([.uint64(1 << 40)]), .array([.string("x"), .string("y")])]))
        #expect(f.metadata["empty"] == .array([]))
    }

    @Test func accessors() throws {
        let f = try GGUFFile(bytes: Self.everyTypeFile(version: 3).bytes)
        #expect(f.architecture == "llama")
        #expect(f.int("u8") == 250)
        #expect(f.int("i8") == -7)
        #expect(f.int("u32") == 4_000_000_000)
        #expect(f.int("i64") == Int(Int64.min))
        #expect(f.int("u64") == nil)  // 2^64 - 1 does not fit Int
        #expect(f.int("f32") == nil)
        #expect(f.int("bool") == nil)
        #expect(f.int("missing") == nil)
        #expect(f.double("f32") == 1.5)
        #expect(f.double("i16") == -32000)
        #expect(f.double("string") == nil)
        #expect(f.bool("bool") == true)
        #expect(f.bool("u8") == nil)
        #expect(f.string("string") == "caf\u{E9} \u{1F600}")
        #expect(f.string("u8") == nil)
        #expect(f.stringArray("tokenizer.ggml.tokens") == ["<unk>", "", "\u{2581}the", "\u{65E5}\u{672C}"])
        #expect(f.stringArray("tokenizer.ggml.scores") == nil)
        #expect(f.floatArray("tokenizer.ggml.scores") == [0, -1, -2.5, 3])
        #expect(f.floatArray("tokenizer.ggml.token_type") == [2, 1, 1, 6])
        #expect(f.floatArray("tokenizer.ggml.tokens") == nil)
        #expect(f.intArray("tokenizer.ggml.token_type") == [2, 1, 1, 6])
        #expect(f.intArray("tokenizer.ggml.scores") == nil)
        #expect(f.intArray("nested") == nil)
        #expect(f.stringArray("empty") == [])
        #expect(f.metadata["nested"]?.arrayValue?.first?.arrayValue?.first?.intValue == 1 << 40)
    }

    @Test func readsTensorInfosAndData() throws {
        let (bytes, dataStart) = Self.everyTypeFile(version: 3)
        let f = try GGUFFile(bytes: bytes)
        #expect(f.dataSectionOffset == dataStart)
        #expect(f.tensors.map(\.name) == ["norm", "w"])
        let norm = try #require(f.tensor(named: "norm"))
        #expect(norm.dims == [3] && norm.type == .f32 && norm.dataOffset == dataStart && norm.byteCount == 12)
        #expect(norm.elementCount == 3)
        let w = try #require(f.tensor(named: "w"))
        #expect(w.dims == [32, 2] && w.type == .q8_0 && w.dataOffset == dataStart + 32 && w.byteCount == 68)
        #expect(w.elementCount == 64 && w.rowCount == 2)
        #expect(f.tensor(named: "nope") == nil)
        let normData = f.data(of: norm)
        #expect(Array(normData.bindMemory(to: Float.self)) == [1, 2, 3])
        #expect(Array(f.data(of: w)) == (0..<68).map { UInt8($0) })
        // The in-memory copy is 64-byte aligned, so aligned data offsets give aligned pointers.
        #expect(Int(bitPattern: f.data(of: w).baseAddress) % 32 == 0)
    }

    @Test func readsVersion2() throws {
        let f = try GGUFFile(bytes: Self.everyTypeFile(version: 2).bytes)
        #expect(f.version == 2)
        #expect(f.tensors.count == 2)
        #expect(f.metadata["u64"] == .uint64(UInt64.max))
    }

    @Test func customAlignmentMovesTheDataSection() throws {
        var r = RawGGUF()
        r.header(tensors: 1, kvs: 1)
        r.key("general.alignment", type: GGUFTag.u32); r.u32(256)
        r.tensorInfo("t", dims: [2], type: GGMLTypeID.f32, offset: 256)
        r.pad(to: 256)
        let dataStart = r.count
        r.zeros(256); r.f32(-1); r.f32(7)
        let f = try GGUFFile(bytes: r.bytes)
        #expect(f.alignment == 256)
        #expect(dataStart % 256 == 0 && f.dataSectionOffset == dataStart)
        let t = try #require(f.tensor(named: "t"))
        #expect(t.dataOffset == dataStart + 256)
        #expect(Array(f.data(of: t).bindMemory(to: Float.self)) == [-1, 7])
    }

    @Test func fileWithoutTensorsMayEndBeforeThePadding() throws {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("general.architecture", type: GGUFTag.string); r.str("x")
        let f = try GGUFFile(bytes: r.bytes)
        #expect(f.tensors.isEmpty && f.architecture == "x")
    }

    @Test func emptyWellKnownArrayAcceptedWhateverItsElementType() throws {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.key("tokenizer.ggml.merges", type: GGUFTag.array); r.u32(GGUFTag.u8); r.u64(0)
        #expect(try GGUFFile(bytes: r.bytes).stringArray("tokenizer.ggml.merges") == [])
    }

    @Test func openMissingFileThrowsIO() {
        let path = "/nonexistent-dir-\(UInt32.random(in: 0...UInt32.max))/x.gguf"
        #expect(throws: GGUFError.io(operation: "open", path: path, errno: ENOENT)) { try GGUFFile(path: path) }
    }

    @Test func openDirectoryThrowsIO() {
        #expect(throws: GGUFError.self) { try GGUFFile(path: NSTemporaryDirectory()) }
    }

    @Test func openEmptyFileIsTruncated() throws {
        let path = NSTemporaryDirectory() + "lorad-empty-\(getpid()).gguf"
        #expect(FileManager.default.createFile(atPath: path, contents: Data()))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: GGUFError.truncated(field: "magic", offset: 0, needed: 4, available: 0)) { try GGUFFile(path: path) }
    }

    // MARK: - Files written by the gguf Python package

    /// Compares a file with the typed JSON of its content written by scripts/make_gguf_fixtures.py.
    static func expectMatchesFixture(_ f: GGUFFile, _ json: [String: Any], fileBytes: [UInt8]) throws {
        #expect(f.version == UInt32(json["version"] as! Int))
        #expect(f.alignment == json["alignment"] as! Int)
        #expect(f.dataSectionOffset == json["data_section_offset"] as! Int)
        #expect(f.fileSize == json["file_size"] as! Int)
        let metadata = json["metadata"] as! [[String: Any]]
        #expect(f.metadataKeys == metadata.map { $0["key"] as! String })
        for entry in metadata {
            let key = entry["key"] as! String
            let expected = try GGUFTypedJSON.value(entry)
            let actual = try #require(f.metadata[key])
            #expect(ggufBitwiseEqual(actual, expected), "\(key): \(actual) != \(expected)")
        }
        let tensors = json["tensors"] as! [[String: Any]]
        #expect(f.tensors.map(\.name) == tensors.map { $0["name"] as! String })
        for (t, e) in zip(f.tensors, tensors) {
            #expect(t.dims == e["dims"] as! [Int], "\(t.name)")
            #expect(t.type.rawValue == UInt32(e["type"] as! Int), "\(t.name)")
            #expect(t.dataOffset == e["data_offset"] as! Int, "\(t.name)")
            #expect(t.byteCount == e["n_bytes"] as! Int, "\(t.name)")
            #expect(Array(f.data(of: t)) == GGUFTypedJSON.hex(e["data_hex"] as! String), "\(t.name)")
        }
    }

    @Test(arguments: ["python_written", "python_written_align64"])
    func readsFilesWrittenByGGUFPy(_ stem: String) throws {
        let url = GGUFTestPaths.fixtures.appendingPathComponent("\(stem).gguf")
        let json = try GGUFTypedJSON.load(GGUFTestPaths.fixtures.appendingPathComponent("\(stem).json"))
        let fromPath = try GGUFFile(path: url.path)
        let bytes = [UInt8](try Data(contentsOf: url))
        try Self.expectMatchesFixture(fromPath, json, fileBytes: bytes)
        // The same bytes through the in-memory initializer give the same result.
        let fromBytes = try GGUFFile(bytes: bytes)
        #expect(fromBytes.tensors == fromPath.tensors)
        #expect(fromBytes.metadataKeys == fromPath.metadataKeys)
    }

    // MARK: - The default model

    static func openModel() throws -> GGUFFile {
        let path = GGUFTestPaths.model
        guard FileManager.default.fileExists(atPath: path) else {
            Issue.record("default model not found at \(path): set LORAD_MODEL or assemble gemma-3-270m-q4_k_m.gguf")
            throw GGUFError.io(operation: "open", path: path, errno: ENOENT)
        }
        return try GGUFFile(path: path)
    }

    @Test func modelFactsFromTheReference() throws {
        let f = try Self.openModel()
        // ../shared/reference/gemma-3-270m-q4_k_m/README.md and PLATFORM-NOTES.md §2c.
        #expect(f.fileSize == 253_113_024)
        #expect(f.version == 3)
        #expect(f.architecture == "gemma3")
        #expect(f.int("gemma3.block_count") == 18)
        #expect(f.int("gemma3.embedding_length") == 640)
        #expect(f.int("gemma3.feed_forward_length") == 2048)
        #expect(f.int("gemma3.attention.head_count") == 4)
        #expect(f.int("gemma3.attention.head_count_kv") == 1)
        #expect(f.int("gemma3.attention.key_length") == 256)
        #expect(f.int("gemma3.attention.sliding_window") == 512)
        #expect(f.int("gemma3.context_length") == 32768)
        #expect(f.double("gemma3.rope.freq_base") == 1_000_000)
        #expect(f.string("tokenizer.ggml.model") == "llama")
        #expect(f.string("tokenizer.ggml.pre") == "default")
        #expect(f.int("tokenizer.ggml.bos_token_id") == 2)
        #expect(f.int("tokenizer.ggml.eos_token_id") == 1)
        #expect(f.int("tokenizer.ggml.unknown_token_id") == 3)
        #expect(f.int("tokenizer.ggml.padding_token_id") == 0)
        #expect(f.bool("tokenizer.ggml.add_bos_token") == true)
        #expect(f.bool("tokenizer.ggml.add_space_prefix") == false)

        let tokens = try #require(f.stringArray("tokenizer.ggml.tokens"))
        #expect(tokens.count == 262_144)
        #expect(tokens[0] == "<pad>" && tokens[1] == "<eos>" && tokens[2] == "<bos>" && tokens[3] == "<unk>")
        #expect(tokens[105] == "<start_of_turn>" && tokens[106] == "<end_of_turn>")
        #expect(tokens[212] == "</s>")
        #expect(tokens[255_999] == "<start_of_image>")
        #expect(tokens[238] == "<0x00>" && tokens[493] == "<0xFF>")
        #expect(f.floatArray("tokenizer.ggml.scores")?.count == 262_144)
        let types = try #require(f.intArray("tokenizer.ggml.token_type"))
        var histogram: [Int: Int] = [:]
        for t in types { histogram[t, default: 0] += 1 }
        #expect(histogram == [1: 255_474, 3: 6249, 4: 165, 6: 256])

        let embd = try #require(f.tensor(named: "token_embd.weight"))
        #expect(embd.type == .q8_0)
        #expect(embd.dims == [640, 262_144])
        #expect(embd.byteCount == 178_257_920)
        #expect(f.tensor(named: "output.weight") == nil)  // the embedding doubles as the output head
        #expect(Set(f.tensors.map(\.type)) == [.f32, .q5_0, .q4_K, .q6_K, .q8_0])
        for i in 0..<18 { #expect(f.tensor(named: "blk.\(i).attn_q.weight") != nil) }
        #expect(f.tensor(named: "blk.18.attn_q.weight") == nil)
    }

    @Test func modelMatchesGGUFPyReader() throws {
        let f = try Self.openModel()
        let json = try GGUFTypedJSON.load(GGUFTestPaths.fixtures.appendingPathComponent("gemma-3-270m-q4_k_m.python-reader.json"))
        #expect(f.fileSize == json["file_size"] as! Int)
        #expect(f.version == UInt32(json["version"] as! Int))
        #expect(f.alignment == json["alignment"] as! Int)
        #expect(f.dataSectionOffset == json["data_section_offset"] as! Int)

        let metadata = json["metadata"] as! [[String: Any]]
        #expect(f.metadataKeys == metadata.map { $0["key"] as! String })
        for entry in metadata {
            let key = entry["key"] as! String
            let actual = try #require(f.metadata[key])
            if let count = entry["count"] as? Int {  // summarized array
                let elements = try #require(actual.arrayValue)
                #expect(elements.count == count, "\(key)")
                #expect(elements.first?.type.description == entry["element_type"] as? String, "\(key)")
                var h = GGUFFNV1a64()
                for e in elements { h.add(element: e) }
                #expect(ggufHex64(h.value) == entry["fnv1a64"] as! String, "\(key)")
                for (index, sample) in entry["samples"] as! [String: Any] {
                    #expect(ggufBitwiseEqual(elements[Int(index)!], try GGUFTypedJSON.value(sample)), "\(key)[\(index)]")
                }
            } else {
                #expect(ggufBitwiseEqual(actual, try GGUFTypedJSON.value(entry)), "\(key)")
            }
        }

        let tensors = json["tensors"] as! [[String: Any]]
        #expect(f.tensors.map(\.name) == tensors.map { $0["name"] as! String })
        for (t, e) in zip(f.tensors, tensors) {
            #expect(t.dims == e["dims"] as! [Int], "\(t.name)")
            #expect(t.type.rawValue == UInt32(e["type"] as! Int), "\(t.name)")
            #expect(t.dataOffset == e["data_offset"] as! Int, "\(t.name)")
            #expect(t.byteCount == e["n_bytes"] as! Int, "\(t.name)")
            let data = f.data(of: t)
            var head = GGUFFNV1a64(), tail = GGUFFNV1a64()
            head.add(data.prefix(256))
            tail.add(data.suffix(256))
            #expect(ggufHex64(head.value) == e["head_fnv1a64"] as! String, "\(t.name)")
            #expect(ggufHex64(tail.value) == e["tail_fnv1a64"] as! String, "\(t.name)")
        }
    }

    #if os(Linux)
    @Test func modelIsMemoryMappedNotCopied() throws {
        let f = try Self.openModel()
        let embd = try #require(f.tensor(named: "token_embd.weight"))
        let address = UInt(bitPattern: f.data(of: embd).baseAddress)
        // /proc/self/maps lists the mapping that holds the tensor data, backed by the model file itself.
        let maps = try String(contentsOfFile: "/proc/self/maps", encoding: .utf8)
        let resolved = URL(fileURLWithPath: GGUFTestPaths.model).resolvingSymlinksInPath().path
        let line = maps.split(separator: "\n").first { line in
            let range = line.split(separator: " ")[0].split(separator: "-").compactMap { UInt($0, radix: 16) }
            return range.count == 2 && range[0] <= address && address < range[1]
        }
        // `f` owns the mapping: keep it alive until the maps were read (ARC may release it after its last use).
        withExtendedLifetime(f) {}
        let mapping = try #require(line.map(String.init))
        #expect(mapping.hasSuffix(resolved), "\(mapping)")
        #expect(mapping.split(separator: " ")[1].hasPrefix("r-"), "mapping must be read-only: \(mapping)")
    }
    #endif
}
