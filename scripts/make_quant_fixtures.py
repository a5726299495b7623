#!/usr/bin/env python3
"""Generate the dequantization / quantization fixtures in Tests/RuntimeTests/Fixtures/quant/.

The reference is the `gguf` package (pinned: gguf==0.19.0), whose numpy code in `gguf/quants.py` is maintained
with the GGUF format by the ggml authors. For every tensor type lorad reads, this writes

    <type>.bin          raw blocks, exactly as they sit in a GGUF tensor
    <type>.f32          gguf.quants.dequantize(<type>.bin) as little-endian float32

For activation quantization (Quant.quantize) it writes

    quantize_input.f32  float32 inputs (4 super-blocks of 256)
    quantize_<type>.bin expected bytes: gguf.quants.quantize for f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1;
                        for q8_1 and q8_K (not implemented by gguf) the numpy transcription below of
                        ggml-quants.c quantize_row_q8_1_ref / quantize_row_q8_K_ref.
    quantize_q8_0.f32   gguf.quants.dequantize of quantize_q8_0.bin (round trip)
    quantize_q8_K.f32   ggml dequantize_row_q8_K (d * qs) of quantize_q8_K.bin, transcribed below

Data is fully determined by SEED (numpy PCG64). Usage:

    python3 scripts/make_quant_fixtures.py            # (re)write the fixtures
    python3 scripts/make_quant_fixtures.py --check    # regenerate in memory, compare with the committed files

NaN is never written (NaN payloads are not part of the format contract); infinities, signed zeros and subnormals
appear on purpose in the plain float types and as block scales.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

SEED = 20240611
PINNED_GGUF = "0.19.0"
OUT = Path(__file__).resolve().parent.parent / "Tests" / "RuntimeTests" / "Fixtures" / "quant"

# (file stem, ggml type, number of blocks). 1024 elements for plain and legacy types, 2048 for K-quants.
TYPES = [
    ("f32", T.F32, 1024),
    ("f16", T.F16, 1024),
    ("bf16", T.BF16, 1024),
    ("q4_0", T.Q4_0, 32),
    ("q4_1", T.Q4_1, 32),
    ("q5_0", T.Q5_0, 32),
    ("q5_1", T.Q5_1, 32),
    ("q8_0", T.Q8_0, 32),
    ("q2_K", T.Q2_K, 8),
    ("q3_K", T.Q3_K, 8),
    ("q4_K", T.Q4_K, 8),
    ("q5_K", T.Q5_K, 8),
    ("q6_K", T.Q6_K, 8),
]

# Byte offsets of the f16 scale fields inside one block (ggml-common.h block structs).
SCALE_OFFSETS = {
    T.Q4_0: [0],            # d
    T.Q4_1: [0, 2],         # d, m
    T.Q5_0: [0],            # d
    T.Q5_1: [0, 2],         # d, m
    T.Q8_0: [0],            # d
    T.Q2_K: [80, 82],       # scales[16], qs[64], d, dmin
    T.Q3_K: [108],          # hmask[32], qs[64], scales[12], d
    T.Q4_K: [0, 2],         # d, dmin, scales[12], qs[128]
    T.Q5_K: [0, 2],         # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: [208],          # ql[128], qh[64], scales[16], d
}

F16_SUBNORMAL = np.array([0x0001, 0x03FF], dtype=np.uint16)  # smallest and largest f16 subnormal


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random finite, normal f16 bit patterns with |x| in [2^-14, 2^4), random sign."""
    exp = rng.integers(1, 1 + 18, size=n, dtype=np.uint16)       # biased exponent 1..18  => 2^-14 .. 2^3
    mant = rng.integers(0, 1024, size=n, dtype=np.uint16)
    sign = rng.integers(0, 2, size=n, dtype=np.uint16) << 15
    return (sign | (exp << 10) | mant).astype(np.uint16)


def realistic_floats(rng: np.random.Generator, n_blocks: int, block: int) -> np.ndarray:
    """Weight-like float32 blocks: gaussian with per-block scale spread over 1e-3..1e2, plus edge-case blocks."""
    x = rng.standard_normal((n_blocks, block)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-3, 2, size=(n_blocks, 1))).astype(np.float32)
    x[0] = 0.0                                   # all-zero block: d = 0
    if n_blocks > 1:
        x[1] = np.float32(0.37)                  # constant block: max == min for the affine types
    if n_blocks > 2:
        x[2] = rng.uniform(-1e-6, 1e-6, block).astype(np.float32)   # tiny: f16 scale underflows to subnormal/zero
    if n_blocks > 3:
        x[3, :] = rng.standard_normal(block).astype(np.float32) * np.float32(0.01)
        x[3, block // 3] = np.float32(-40.0)     # one outlier dominates the scale
    if n_blocks > 4:
        x[4] = np.abs(x[4])                      # all positive
    if n_blocks > 5:
        x[5] = -np.abs(x[5])                     # all negative
    return x.reshape(-1)


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """Random bytes with every f16 scale field replaced by a sane finite value; a few deliberate edge scales."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    offs = SCALE_OFFSETS[qtype]
    for off in offs:
        b[:, off:off + 2] = sane_f16(rng, n_blocks).reshape(-1, 1).view(np.uint8)
    # Edge cases in the last blocks: subnormal scale, +0 / -0 scale, all-ones payload.
    if n_blocks >= 4:
        b[-1, offs[0]:offs[0] + 2] = F16_SUBNORMAL[1:2].view(np.uint8)
        b[-2, offs[0]:offs[0] + 2] = np.array([0x8000], dtype=np.uint16).view(np.uint8)   # -0.0
        if len(offs) > 1:
            b[-2, offs[1]:offs[1] + 2] = F16_SUBNORMAL[0:1].view(np.uint8)
        payload = np.ones(type_size, dtype=bool)
        for off in offs:
            payload[off:off + 2] = False
        b[-3, payload] = 0xFF                    # every quant and sub-scale at its maximum
        b[-4, payload] = 0x00                    # every quant and sub-scale at zero
    return b.reshape(-1)


def plain_raw(rng: np.random.Generator, qtype: T, n: int) -> np.ndarray:
    """Raw bytes for F32 / F16 / BF16: half quantized realistic floats, half random finite bit patterns + specials."""
    half = n // 2
    real = realistic_floats(rng, half // 32, 32)
    if qtype == T.F32:
        real_raw = quantize(real, T.F32).view(np.uint32)
        bits = rng.integers(0, 2**32, size=n - half, dtype=np.uint32)
        bits = np.where((bits & 0x7F800000) == 0x7F800000, bits & 0xBFFFFFFF, bits)   # exp all-ones -> finite
        specials = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF,
                             0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000], dtype=np.uint32)
        bits[:len(specials)] = specials
        return np.concatenate([real_raw, bits]).view(np.uint8)
    if qtype == T.F16:
        real_raw = quantize(real, T.F16).view(np.uint16)
        bits = rng.integers(0, 2**16, size=n - half, dtype=np.uint16)
        nan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0)
        bits = np.where(nan, bits & 0xFBFF, bits)
        specials = np.array([0x0000, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00],
                            dtype=np.uint16)
        bits[:len(specials)] = specials
        return np.concatenate([real_raw, bits]).view(np.uint8)
    if qtype == T.BF16:
        real_raw = quantize(real, T.BF16).view(np.uint16)
        bits = rng.integers(0, 2**16, size=n - half, dtype=np.uint16)
        nan = ((bits & 0x7F80) == 0x7F80) & ((bits & 0x007F) != 0)
        bits = np.where(nan, bits & 0xFFBF, bits)
        specials = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80],
                            dtype=np.uint16)
        bits[:len(specials)] = specials
        return np.concatenate([real_raw, bits]).view(np.uint8)
    raise ValueError(qtype)


def make_raw(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    if qtype in (T.F32, T.F16, T.BF16):
        return plain_raw(rng, qtype, n_blocks)
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        # First half: blocks written by gguf.quants.quantize; second half: random payloads.
        n_real = n_blocks // 2
        real = quantize(realistic_floats(rng, n_real, block_size), qtype).reshape(-1)
        return np.concatenate([real, random_blocks(rng, qtype, n_blocks - n_real)])
    # K-quants: gguf 0.19.0 has no quantizer for them, so every block is a random payload.
    return random_blocks(rng, qtype, n_blocks)


# MARK: - activation quantizers not provided by gguf (transcribed from ggml-quants.c)

def f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float16).view(np.uint8)


def quantize_q8_1_ref(x: np.ndarray) -> np.ndarray:
    """ggml quantize_row_q8_1_ref: block {f16 d, f16 s, int8 qs[32]}; d = amax/127, qs = roundf(x/d), s = sum(qs)*d."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        idv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = gguf.quants.np_roundf(blocks * idv).astype(np.int8)
    s = (qs.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d).astype(np.float32)
    return np.concatenate([f16_bytes(d), f16_bytes(s), qs.view(np.uint8)], axis=1).reshape(-1)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml nearest_int: the 1.5*2^23 magic-number trick, i.e. round half to even in float32."""
    return np.rint(v.astype(np.float32)).astype(np.int32)


def quantize_q8_K_ref(x: np.ndarray) -> np.ndarray:
    """ggml quantize_row_q8_K_ref: block {f32 d, int8 qs[256], int16 bsums[16]}.

    max = the element of largest magnitude (first one on ties), iscale = -127/max, qs = min(127, nearest_int(iscale*x)),
    d = 1/iscale. An all-zero block gets d = 0, qs = 0; ggml leaves its bsums unwritten, here they are 0.
    """
    out = []
    for blk in x.astype(np.float32).reshape(-1, 256):
        amax_i = int(np.argmax(np.abs(blk)))          # argmax returns the first maximum, like the strict '>' scan
        mx = blk[amax_i]
        if mx == 0:
            d = np.float32(0)
            qs = np.zeros(256, dtype=np.int8)
            bsums = np.zeros(16, dtype=np.int16)
        else:
            iscale = np.float32(-127.0) / mx
            qs = np.minimum(127, nearest_int(iscale * blk)).astype(np.int8)
            bsums = qs.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
            d = np.float32(1) / iscale
        out.append(np.concatenate([np.array([d], dtype=np.float32).view(np.uint8), qs.view(np.uint8),
                                   bsums.view(np.uint8)]))
    return np.concatenate(out)


def dequantize_q8_K_ref(raw: np.ndarray) -> np.ndarray:
    """ggml dequantize_row_q8_K: y = d * qs, in float32."""
    b = raw.reshape(-1, 292)
    d = b[:, :4].copy().view("<f4").astype(np.float32)
    qs = b[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).astype("<f4").reshape(-1)


def quantize_input(rng: np.random.Generator) -> np.ndarray:
    """Activation-like inputs, 4 super-blocks of 256: gaussian at varied scales, one zero block of 32, exact ties."""
    x = (rng.standard_normal(1024) * 10.0 ** rng.uniform(-2, 1.5, size=1024 // 32).repeat(32)).astype(np.float32)
    x[32:64] = 0.0                                         # zero q8_0 / q8_1 block
    x[64:96] = np.float32(2.5) * np.arange(-16, 16, dtype=np.float32) / np.float32(16)   # many exact .5 products
    x[256 + 7] = np.float32(-300.0)                        # negative max magnitude drives q8_K's scale sign
    x[512:768] *= np.float32(1e-4)                         # small super-block
    return x


# MARK: - driver

def build(rng: np.random.Generator) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for stem, qtype, n_blocks in TYPES:
        raw = make_raw(rng, qtype, n_blocks)
        expected = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(-1)
        if np.isnan(expected).any():
            raise SystemExit(f"{stem}: NaN in expected values")
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        assert raw.size == n_blocks * type_size and expected.size == n_blocks * block_size, stem
        files[f"{stem}.bin"] = raw.astype(np.uint8).tobytes()
        files[f"{stem}.f32"] = expected.astype("<f4").tobytes()

    x = quantize_input(rng)
    files["quantize_input.f32"] = x.astype("<f4").tobytes()
    files["quantize_f16.bin"] = quantize(x, T.F16).view(np.uint8).tobytes()
    files["quantize_bf16.bin"] = quantize(x, T.BF16).view(np.uint8).tobytes()
    files["quantize_q8_0.bin"] = quantize(x, T.Q8_0).reshape(-1).tobytes()
    for stem, qtype in [("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)]:
        files[f"quantize_{stem}.bin"] = quantize(x, qtype).reshape(-1).tobytes()
    files["quantize_q8_1.bin"] = quantize_q8_1_ref(x).tobytes()
    files["quantize_q8_K.bin"] = quantize_q8_K_ref(x).tobytes()
    # Round trips: dequantized values of the quantized input.
    files["quantize_q8_0.f32"] = np.asarray(dequantize(quantize(x, T.Q8_0), T.Q8_0), dtype="<f4").reshape(-1).tobytes()
    files["quantize_q8_K.f32"] = dequantize_q8_K_ref(np.frombuffer(files["quantize_q8_K.bin"], dtype=np.uint8)).tobytes()
    # Cross-check the q8_1 transcription against gguf's q8_0 (same d and qs, different block layout).
    q80 = np.frombuffer(files["quantize_q8_0.bin"], dtype=np.uint8).reshape(-1, 34)
    q81 = np.frombuffer(files["quantize_q8_1.bin"], dtype=np.uint8).reshape(-1, 36)
    assert (q80[:, :2] == q81[:, :2]).all() and (q80[:, 2:] == q81[:, 4:]).all()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures instead of writing")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if version("gguf") != PINNED_GGUF:
        print(f"warning: gguf {version('gguf')} installed, fixtures were made with {PINNED_GGUF}", file=sys.stderr)

    files = build(np.random.default_rng(SEED))
    if args.check:
        bad = [n for n, data in files.items()
               if not (args.out / n).exists() or (args.out / n).read_bytes() != data]
        for n in bad:
            print(f"differs: {n}", file=sys.stderr)
        print("ok" if not bad else f"{len(bad)} file(s) differ")
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for n, data in sorted(files.items()):
        (args.out / n).write_bytes(data)
        total += len(data)
        print(f"{n:24s} {len(data):7d}  sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    print(f"total {total} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
