#!/usr/bin/env python3
"""Generate the GGUF reader/writer fixtures in Tests/RuntimeTests/Fixtures/gguf/.

The reference is the `gguf` package (pinned: gguf==0.19.0), the GGUF format authors' own Python implementation:
its GGUFWriter writes the fixture files and its GGUFReader reads them (and the real model) back. Nothing here
depends on lorad's Swift code, so the Swift tests compare lorad's reader and writer against an independent
implementation.

Files written:

    python_written.gguf          gguf.GGUFWriter output: every metadata value type, arrays of every element
                                 type, arrays of strings, nested arrays, tensors of 1 to 4 dims in F32, F16,
                                 BF16, I32, Q8_0, Q4_K; default alignment (32)
    python_written.json          what that file holds, from this script's own inputs (typed JSON, see below)
    python_written_align64.gguf  the same writer with add_custom_alignment(64), fewer keys
    python_written_align64.json
    gemma-3-270m-q4_k_m.python-reader.json
                                 gguf.GGUFReader's view of the default model (only with --model): every key with
                                 its type and value (arrays over 64 items summarized as count + FNV-1a-64 of the
                                 re-encoded elements + samples), and every tensor's name, dims, type, absolute data
                                 offset, byte count and FNV-1a-64 of its first and last 256 data bytes

Typed JSON (one value): {"type": "uint32", "value": "123"} (integers as decimal strings, so 64-bit values stay
exact), {"type": "float32", "bits": "0x40490fdb"} (floats as IEEE bit patterns), {"type": "bool", "value": true},
{"type": "string", "value": "..."}, {"type": "array", "element_type": "int32", "items": [typed values]} or, when
summarized, {"type": "array", "element_type": ..., "count": N, "fnv1a64": "0x...", "samples": {"index": typed}}.
The FNV-1a-64 of an array runs over each element encoded as in a GGUF file (little-endian scalars; strings as
u64 length + UTF-8 bytes; bools as one byte 0/1).

Usage:

    python3 scripts/make_gguf_fixtures.py                 # (re)write the small fixtures
    python3 scripts/make_gguf_fixtures.py --model PATH    # also the default model's reader view (~1 min)
    python3 scripts/make_gguf_fixtures.py --check         # regenerate the small fixtures in memory and compare
    python3 scripts/make_gguf_fixtures.py --dump FILE     # print gguf.GGUFReader's view of FILE as typed JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

SEED = 20250301
PINNED_GGUF = "0.19.0"
OUT = Path(__file__).resolve().parent.parent / "Tests" / "RuntimeTests" / "Fixtures" / "gguf"
SUMMARIZE_OVER = 64
MODEL_SAMPLES = [0, 1, 2, 3, 105, 106, 107, 138, 168, 212, 238, 493, 9259, 236764, 255968, 255999, 262143]

TYPE_NAMES = {
    V.UINT8: "uint8", V.INT8: "int8", V.UINT16: "uint16", V.INT16: "int16", V.UINT32: "uint32", V.INT32: "int32",
    V.FLOAT32: "float32", V.BOOL: "bool", V.STRING: "string", V.ARRAY: "array", V.UINT64: "uint64",
    V.INT64: "int64", V.FLOAT64: "float64",
}
INT_FORMATS = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
               V.UINT64: "<Q", V.INT64: "<q"}


# MARK: - typed JSON

def fnv1a64(data: bytes, h: int = 0xCBF29CE484222325) -> int:
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def encode_element(vtype: V, value) -> bytes:
    """One element as it is stored in a GGUF array (used only for the FNV summaries)."""
    if vtype in INT_FORMATS:
        return struct.pack(INT_FORMATS[vtype], int(value))
    if vtype == V.FLOAT32:
        return struct.pack("<f", float(value))
    if vtype == V.FLOAT64:
        return struct.pack("<d", float(value))
    if vtype == V.BOOL:
        return bytes([1 if value else 0])
    if vtype == V.STRING:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(raw)) + raw
    raise ValueError(f"cannot summarize elements of type {vtype}")


def typed(vtype: V, value, element_type: V | None = None, summarize: bool = False) -> dict:
    """Typed JSON for `value` of GGUF type `vtype`. Arrays are (element_type, [element values])."""
    name = TYPE_NAMES[vtype]
    if vtype in INT_FORMATS:
        return {"type": name, "value": str(int(value))}
    if vtype == V.FLOAT32:
        return {"type": name, "bits": "0x%08x" % struct.unpack("<I", struct.pack("<f", float(value)))[0]}
    if vtype == V.FLOAT64:
        return {"type": name, "bits": "0x%016x" % struct.unpack("<Q", struct.pack("<d", float(value)))[0]}
    if vtype == V.BOOL:
        return {"type": name, "value": bool(value)}
    if vtype == V.STRING:
        return {"type": name, "value": value if isinstance(value, str) else bytes(value).decode("utf-8")}
    assert vtype == V.ARRAY and element_type is not None
    items = value
    if summarize and len(items) > SUMMARIZE_OVER:
        h = 0xCBF29CE484222325
        for item in items:
            h = fnv1a64(encode_element(element_type, item), h)
        samples = {str(i): typed(element_type, items[i]) for i in MODEL_SAMPLES if i < len(items)}
        return {"type": name, "element_type": TYPE_NAMES[element_type], "count": len(items),
                "fnv1a64": "0x%016x" % h, "samples": samples}
    if element_type == V.ARRAY:
        return {"type": name, "element_type": "array", "items": [typed(V.ARRAY, inner[1], inner[0]) for inner in items]}
    return {"type": name, "element_type": TYPE_NAMES[element_type], "items": [typed(element_type, x) for x in items]}


# MARK: - the python reader's view of a file

def rebuild_value(parts: list, i: int, vtype: V):
    """Rebuilds a value from GGUFReader's flat `parts` list starting at index i. GGUFReader flattens nested
    arrays in `contents()`, but its parts list keeps every element type and count, so the structure is exact.
    Returns ((element_type, items) for arrays or the scalar, next index)."""
    if vtype == V.STRING:
        return bytes(parts[i + 1]).decode("utf-8"), i + 2
    if vtype == V.ARRAY:
        element_type = V(int(parts[i][0]))
        n = int(parts[i + 1][0])
        i += 2
        if element_type == V.STRING:  # fast path: (length, bytes) pairs
            items = [bytes(parts[i + 2 * k + 1]).decode("utf-8") for k in range(n)]
            return (element_type, items), i + 2 * n
        if element_type != V.ARRAY:
            items = [parts[i + k][0].item() for k in range(n)]
            return (element_type, items), i + n
        items = []
        for _ in range(n):
            item, i = rebuild_value(parts, i, element_type)
            items.append(item)
        return (element_type, items), i
    return parts[i][0].item(), i + 1


def reader_view(path: str, summarize: bool, tensor_bytes: str) -> dict:
    """gguf.GGUFReader's view of `path` as typed JSON. tensor_bytes: "hex" (whole data) or "ends" (FNV of the
    first and last 256 bytes)."""
    r = gguf.GGUFReader(path)
    metadata = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = V(int(field.parts[2][0]))
        value, end = rebuild_value(field.parts, 3, vtype)
        assert end == len(field.parts), key
        if vtype == V.ARRAY:
            metadata.append({"key": key, **typed(V.ARRAY, value[1], value[0], summarize=summarize)})
        else:
            metadata.append({"key": key, **typed(vtype, value)})
    tensors = []
    for t in r.tensors:
        raw = np.asarray(t.data).view(np.uint8).reshape(-1).tobytes()
        assert len(raw) == t.n_bytes
        entry = {"name": t.name, "dims": [int(d) for d in t.shape], "type": int(t.tensor_type),
                 "data_offset": int(t.data_offset), "n_bytes": int(t.n_bytes)}
        if tensor_bytes == "hex":
            entry["data_hex"] = raw.hex()
        else:
            entry["head_fnv1a64"] = "0x%016x" % fnv1a64(raw[:256])
            entry["tail_fnv1a64"] = "0x%016x" % fnv1a64(raw[-256:])
        tensors.append(entry)
    version_field = r.fields["GGUF.version"]
    return {"version": int(version_field.parts[0][0]), "alignment": int(r.alignment),
            "data_section_offset": int(r.data_offset), "file_size": os.path.getsize(path),
            "metadata": metadata, "tensors": tensors}


# MARK: - the fixture files

def small_fixture(rng: np.random.Generator, alignment: int | None):
    """Returns (spec metadata list of (key, vtype, value, sub_type), tensors list of (name, np array, raw_dtype))."""
    kv: list = []

    def add(key, vtype, value, sub_type=None):
        kv.append((key, vtype, value, sub_type))

    add("general.name", V.STRING, "tiny fixture")
    if alignment is not None:
        add("general.alignment", V.UINT32, alignment)
    add("test.uint8", V.UINT8, 200)
    add("test.int8", V.INT8, -100)
    add("test.uint16", V.UINT16, 60000)
    add("test.int16", V.INT16, -30000)
    add("test.uint32", V.UINT32, 4_000_000_000)
    add("test.int32", V.INT32, -2_000_000_000)
    add("test.float32", V.FLOAT32, 3.14159)
    add("test.bool_true", V.BOOL, True)
    add("test.string", V.STRING, "h\u00e9llo, w\u00f6rld \u2713 \u65e5\u672c \U0001F389 \"quoted\"\ttab")
    add("test.uint64", V.UINT64, 2**64 - 1)
    add("test.int64", V.INT64, -(2**63))
    add("test.float64", V.FLOAT64, 2.718281828459045)
    if alignment is None:
        add("test.bool_false", V.BOOL, False)
        add("test.empty_string", V.STRING, "")
        add("test.float32_negative_zero", V.FLOAT32, -0.0)
        add("test.float32_inf", V.FLOAT32, float("inf"))
        add("test.float64_tiny", V.FLOAT64, 5e-324)
        add("test.array.uint8", V.ARRAY, [0, 1, 255], V.UINT8)
        add("test.array.int8", V.ARRAY, [-128, 0, 127], V.INT8)
        add("test.array.uint16", V.ARRAY, [0, 65535], V.UINT16)
        add("test.array.int16", V.ARRAY, [-32768, 32767], V.INT16)
        add("test.array.uint32", V.ARRAY, [0, 4294967295, 7], V.UINT32)
        add("test.array.int32", V.ARRAY, [-2147483648, 2147483647, -1], V.INT32)
        add("test.array.float32", V.ARRAY, [0.5, -1.25, 1e-8, 65504.0], V.FLOAT32)
        add("test.array.bool", V.ARRAY, [True, False, True], V.BOOL)
        add("test.array.uint64", V.ARRAY, [0, 2**64 - 1], V.UINT64)
        add("test.array.int64", V.ARRAY, [-(2**63), 2**63 - 1], V.INT64)
        add("test.array.float64", V.ARRAY, [1.0 / 3.0, -2.5e100], V.FLOAT64)
        add("test.array.string", V.ARRAY, ["a", "", "\u00fcn\u00ef", "<0x0A>", "line\nbreak", "\u2581\u2581"], V.STRING)
        add("test.array.nested_int32", V.ARRAY, [[1, 2, 3], [4], [5, 6]])
        add("test.array.nested_string", V.ARRAY, [["x", "y"], ["z"]])
        add("test.array.nested3", V.ARRAY, [[[1], [2, 3]], [[4]]])
        add("tokenizer.ggml.model", V.STRING, "llama")
        add("tokenizer.ggml.tokens", V.ARRAY, ["<pad>", "<eos>", "<bos>", "<unk>", "\u2581hello"], V.STRING)
        add("tokenizer.ggml.scores", V.ARRAY, [0.0, 0.0, 0.0, 0.0, -1.5], V.FLOAT32)
        add("tokenizer.ggml.token_type", V.ARRAY, [3, 3, 3, 2, 1], V.INT32)
        add("tokenizer.ggml.bos_token_id", V.UINT32, 2)

    tensors: list = []
    tensors.append(("f32.vec", rng.standard_normal(7).astype(np.float32), None))
    tensors.append(("f32.mat", rng.standard_normal((3, 5)).astype(np.float32), None))
    if alignment is None:
        tensors.append(("f16.t3", rng.standard_normal((2, 3, 4)).astype(np.float16), None))
        tensors.append(("i32.t4", rng.integers(-1000, 1000, size=(2, 1, 3, 2)).astype(np.int32), None))
        bf16 = gguf.quants.quantize(rng.standard_normal((2, 6)).astype(np.float32), T.BF16)
        tensors.append(("bf16.mat", bf16, T.BF16))
        q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0)
        tensors.append(("q8_0.weight", q8, T.Q8_0))
        q4k = rng.integers(0, 256, size=(1, 144), dtype=np.uint8)
        q4k[0, 0:2] = np.frombuffer(np.float16(0.25).tobytes(), dtype=np.uint8)
        q4k[0, 2:4] = np.frombuffer(np.float16(0.125).tobytes(), dtype=np.uint8)
        tensors.append(("q4_K.weight", q4k, T.Q4_K))
    else:
        tensors.append(("f16.vec", rng.standard_normal(70).astype(np.float16), None))
    return kv, tensors


def write_fixture(path: str, kv: list, tensors: list, alignment: int | None) -> dict:
    """Writes with gguf.GGUFWriter and returns the expected typed JSON built from the inputs."""
    w = gguf.GGUFWriter(path, arch="lorad-test")
    for key, vtype, value, sub_type in kv:
        if key == "general.alignment":
            w.add_custom_alignment(value)
        else:
            w.add_key_value(key, value, vtype, sub_type=sub_type)
    for name, array, raw_dtype in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    def spec_value(vtype, value, sub_type):
        if vtype != V.ARRAY:
            return typed(vtype, value)
        return typed(V.ARRAY, nest(value)[1], sub_type if sub_type is not None else nest(value)[0])

    def nest(value):
        """(element_type, items) with nested lists turned into (element_type, items) pairs, as gguf-py infers."""
        et = V.ARRAY if isinstance(value[0], list) else gguf.GGUFValueType.get_type(value[0])
        return et, [nest(x) for x in value] if et == V.ARRAY else value

    metadata = [{"key": "general.architecture", **typed(V.STRING, "lorad-test")}]
    metadata += [{"key": k, **spec_value(vt, v, st)} for k, vt, v, st in kv]

    align = alignment or 32
    r = gguf.GGUFReader(path)
    expected_tensors = []
    relative = 0
    for name, array, raw_dtype in tensors:
        if raw_dtype is None:
            qtype = {np.dtype(np.float32): T.F32, np.dtype(np.float16): T.F16, np.dtype(np.int32): T.I32}[array.dtype]
            shape = array.shape
        else:
            qtype = raw_dtype
            shape = gguf.quants.quant_shape_from_byte_shape(array.shape, raw_dtype)
        raw = np.ascontiguousarray(array).tobytes()
        expected_tensors.append({"name": name, "dims": [int(d) for d in reversed(shape)], "type": int(qtype),
                                 "data_offset": int(r.data_offset) + relative, "n_bytes": len(raw),
                                 "data_hex": raw.hex()})
        relative += (len(raw) + align - 1) // align * align
    expected = {"version": 3, "alignment": align, "data_section_offset": int(r.data_offset),
                "file_size": os.path.getsize(path), "metadata": metadata, "tensors": expected_tensors}
    # The independent reader must see exactly the inputs.
    seen = reader_view(path, summarize=False, tensor_bytes="hex")
    if seen != expected:
        for section in ("metadata", "tensors"):
            for a, b in zip(seen[section], expected[section]):
                if a != b:
                    print(f"reader: {a}\ninputs: {b}", file=sys.stderr)
        others = {k: (seen[k], expected[k]) for k in expected if k not in ("metadata", "tensors") and seen[k] != expected[k]}
        sys.exit(f"gguf.GGUFReader disagrees with the inputs for {path}: {others}")
    return expected


def generate(directory: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(SEED)
    files: dict[str, bytes] = {}
    for stem, alignment in (("python_written", None), ("python_written_align64", 64)):
        kv, tensors = small_fixture(rng, alignment)
        path = directory / f"{stem}.gguf"
        expected = write_fixture(str(path), kv, tensors, alignment)
        files[f"{stem}.gguf"] = path.read_bytes()
        files[f"{stem}.json"] = (json.dumps(expected, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare regenerated fixtures with the committed ones")
    parser.add_argument("--model", help="also write the default model's reader view")
    parser.add_argument("--dump", help="print gguf.GGUFReader's view of this file and exit")
    args = parser.parse_args()

    if version("gguf") != PINNED_GGUF:
        sys.exit(f"gguf {version('gguf')} installed; these fixtures are pinned to gguf=={PINNED_GGUF}")

    if args.dump:
        print(json.dumps(reader_view(args.dump, summarize=True, tensor_bytes="hex"), ensure_ascii=False))
        return

    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    if args.check:
        bad = [name for name, data in files.items() if (OUT / name).read_bytes() != data]
        if bad:
            sys.exit(f"fixtures differ: {bad}")
        print(f"{len(files)} fixtures match")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
        print(f"wrote {OUT / name} ({len(data)} bytes)")

    if args.model:
        view = reader_view(args.model, summarize=True, tensor_bytes="ends")
        h = hashlib.sha256()
        with open(args.model, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        view = {"file": os.path.basename(args.model), "sha256": h.hexdigest(), **view}
        out = OUT / "gemma-3-270m-q4_k_m.python-reader.json"
        out.write_text(json.dumps(view, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
