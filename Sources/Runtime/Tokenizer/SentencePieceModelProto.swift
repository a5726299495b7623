// SentencePieceModelProto: serializes a SentencePiece ModelProto from a GGUF vocabulary, so that
// libsentencepiece can tokenize without a separate tokenizer.model file.
//
// Wire format: Protocol Buffers encoding (protobuf.dev/programming-guides/encoding): each field is a varint tag
// `field << 3 | wire_type` followed by a varint (wire 0), a length-delimited payload (wire 2) or 4 little-endian
// bytes (wire 5). Field numbers come from sentencepiece's src/sentencepiece_model.proto:
//
//   ModelProto      1 pieces (repeated SentencePiece) | 2 trainer_spec | 3 normalizer_spec
//   SentencePiece   1 piece (string) | 2 score (float) | 3 type (enum, default NORMAL = 1, omitted when NORMAL)
//   TrainerSpec     3 model_type (BPE = 2) | 4 vocab_size | 35 byte_fallback | 40 unk_id | 41 bos_id | 42 eos_id
//                   | 43 pad_id | 45 unk_piece | 46 bos_piece | 47 eos_piece | 48 pad_piece
//   NormalizerSpec  1 name | 3 add_dummy_prefix | 4 remove_extra_whitespaces | 5 escape_whitespaces

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`).
enum SentencePieceType: UInt8 {
    case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// Minimal protobuf writer: varints, tags, length-delimited fields and fixed32 floats.
struct ProtobufWriter {
    private(set) var bytes: [UInt8] = []

    init(reservingCapacity capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func tag(_ field: Int, wireType: Int) { varint(UInt64(field << 3 | wireType)) }

    /// An `int32`/`enum`/`bool` field; negative values are sign-extended to 10 bytes, as protobuf requires.
    mutating func int32Field(_ field: Int, _ value: Int32) {
        tag(field, wireType: 0)
        varint(UInt64(bitPattern: Int64(value)))
    }

    mutating func boolField(_ field: Int, _ value: Bool) {
        tag(field, wireType: 0)
        varint(value ? 1 : 0)
    }

    mutating func floatField(_ field: Int, _ value: Float) {
        tag(field, wireType: 5)
        let bits = value.bitPattern
        bytes.append(UInt8(truncatingIfNeeded: bits))
        bytes.append(UInt8(truncatingIfNeeded: bits >> 8))
        bytes.append(UInt8(truncatingIfNeeded: bits >> 16))
        bytes.append(UInt8(truncatingIfNeeded: bits >> 24))
    }

    mutating func bytesField<C: Collection>(_ field: Int, _ payload: C) where C.Element == UInt8 {
        tag(field, wireType: 2)
        varint(UInt64(payload.count))
        bytes.append(contentsOf: payload)
    }

    mutating func stringField(_ field: Int, _ value: String) { bytesField(field, Array(value.utf8)) }

    /// Number of bytes `varint(value)` writes.
    static func varintSize(_ value: UInt64) -> Int {
        var n = 1
        var v = value >> 7
        while v != 0 {
            n += 1
            v >>= 7
        }
        return n
    }
}

/// Builds the serialized `ModelProto` lorad loads into libsentencepiece.
enum SentencePieceModelProto {
    /// The special pieces and flags written into `TrainerSpec` / `NormalizerSpec`.
    struct Settings {
        var unkID: Int32
        var bosID: Int32 = -1
        var eosID: Int32 = -1
        var padID: Int32 = -1
        var byteFallback: Bool
        /// `NormalizerSpec.add_dummy_prefix`. lorad keeps it off and inserts llama.cpp's space prefix itself,
        /// because llama.cpp adds it only at the start and after special tokens.
        var addDummyPrefix: Bool = false
    }

    /// Serializes pieces `0..<pieces.count` (text, score, type) and `settings`.
    /// The `*_piece` strings are the texts of the special ids: libsentencepiece resolves `bos_id()` and friends
    /// by piece text, whose defaults (`<s>`, `</s>`) do not exist in every vocabulary.
    static func serialize(pieces: [String], scores: [Float], types: [SentencePieceType], settings: Settings) -> [UInt8] {
        let n = pieces.count
        var w = ProtobufWriter(reservingCapacity: n * 24 + 256)
        for i in 0..<n {
            var text = pieces[i]
            text.withUTF8 { utf8 in
                let type = types[i]
                let pieceFieldSize = 1 + ProtobufWriter.varintSize(UInt64(utf8.count)) + utf8.count
                let size = pieceFieldSize + 5 + (type == .normal ? 0 : 2)
                w.tag(1, wireType: 2)
                w.varint(UInt64(size))
                w.bytesField(1, utf8)
                w.floatField(2, scores[i])
                if type != .normal {
                    w.tag(3, wireType: 0)
                    w.varint(UInt64(type.rawValue))
                }
            }
        }

        func pieceText(_ id: Int32) -> String? { id >= 0 && Int(id) < n ? pieces[Int(id)] : nil }

        var trainer = ProtobufWriter()
        trainer.int32Field(3, 2)  // model_type = BPE
        trainer.int32Field(4, Int32(clamping: n))
        trainer.boolField(35, settings.byteFallback)
        trainer.int32Field(40, settings.unkID)
        trainer.int32Field(41, settings.bosID)
        trainer.int32Field(42, settings.eosID)
        trainer.int32Field(43, settings.padID)
        if let t = pieceText(settings.unkID) { trainer.stringField(45, t) }
        if let t = pieceText(settings.bosID) { trainer.stringField(46, t) }
        if let t = pieceText(settings.eosID) { trainer.stringField(47, t) }
        if let t = pieceText(settings.padID) { trainer.stringField(48, t) }
        w.bytesField(2, trainer.bytes)

        var normalizer = ProtobufWriter()
        normalizer.stringField(1, "identity")
        normalizer.boolField(3, settings.addDummyPrefix)
        normalizer.boolField(4, false)  // remove_extra_whitespaces
        normalizer.boolField(5, true)  // escape_whitespaces: ' ' -> U+2581 before matching pieces
        w.bytesField(3, normalizer.bytes)
        return w.bytes
    }
}
