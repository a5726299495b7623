// Tile kernels for quantized matmul on x86, included twice by ck_x86.c (AVX2 and AVX-512 VNNI).
//
// Before inclusion: CK_TARGET (attribute string), CK_SFX(name) (suffixes a name), CK_VNNI (0/1),
// CK_RMAX_LEGACY / CK_CMAX_LEGACY / CK_RMAX_K / CK_CMAX_K (tile sizes).
//
// Arithmetic contract (identical in both inclusions, so results are bitwise equal across ISAs and tile shapes):
// every (weight row, activation row) pair owns one 8-lane float accumulator. Integer lanes are exact sums of
// products of 4 consecutive bytes (times an integer sub-block scale for K-quants); they are converted to float
// and folded in with one FMA per block (legacy types) or two per super-block (K-quants, scale and min parts).
// The row result is a fixed-order horizontal sum of the 8 lanes (the packed q8_0 tiles for logits differ, see
// vec_q8p). Only how the exact integer lanes are formed differs between AVX2 (maddubs + madd) and VNNI
// (vpdpbusd / vpdpwssd).

#define CK_FN static inline __attribute__((always_inline, target(CK_TARGET)))
#define CK_KERNEL static __attribute__((noinline, target(CK_TARGET)))
#define CK_CAT4(a, b, c, d) a##b##c##d
#define CK_CAT4X(a, b, c, d) CK_CAT4(a, b, c, d)
#define CK_NAME(T, R, C) CK_SFX(CK_CAT4X(T, _, R, CK_CAT4X(x, C, , )))

// lanes i = sum_{k<4} u[4i+k] * s[4i+k]   (u unsigned bytes, s signed bytes, no saturation for |u*s| pairs <= 2^14)
CK_FN __m256i CK_SFX(dot_us8)(__m256i u, __m256i s) {
#if CK_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// acc + madd(p16, s16)
CK_FN __m256i CK_SFX(madd_acc)(__m256i acc, __m256i p16, __m256i s16) {
#if CK_VNNI
    return _mm256_dpwssd_epi32(acc, p16, s16);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, s16));
#endif
}

CK_FN float CK_SFX(hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

CK_FN float CK_SFX(h2f)(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

// 16 packed bytes -> 32 bytes: low nibbles (elements 0..15) then high nibbles (16..31).
CK_FN __m256i CK_SFX(nibbles32)(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

// byte i = 0xFF when bit i of `bits` is set, else 0.
CK_FN __m256i CK_SFX(bits32)(uint32_t bits) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}

// ------------------------------------------------------------------------------------------------------------
// Legacy 32-element blocks: q4_0, q5_0, q8_0 against q8_0; q4_1, q5_1 against q8_1.
//
// q4_0 / q5_0 / q4_1 / q5_1 weights are used in their stored unsigned form q (q4_0: w + 8, q5_0: w + 16), so the
// unsigned x signed byte dot needs no sign trick. A per-block correction c_w[b] * c_x[b] is folded in once per
// group of 8 blocks:
//   acc = fma(cvt(lanes(q, x)_b), dw_b * dx_b, acc)                  for every block b, in order
//   acc = fma(c_w[8g..8g+8), c_x[8g..8g+8), acc)                     after the last block of each group g of 8
// q4_0 / q5_0: c_w = dw, c_x = -(dx * (off * sum(x_b)))      (removes the offset)
// q4_1 / q5_1: c_w = m,  c_x = s of the q8_1 block            (ggml: + m * s)
// Both are zero padded to a multiple of 8 blocks. q8_0 weights are signed: lanes(|w|, sign(x, w)), no correction.
// Mat-vec tiles read the blocks directly; batch tiles read rows in the batch layout (see batch_legacy): the
// matrix's batch copy when it has one, else rows unpacked once per row tile into a scratch buffer.
// ------------------------------------------------------------------------------------------------------------

// Activation block size and offset of its quants.
#define CK_XB(type) ((type) == CK_Q4_1 || (type) == CK_Q5_1 ? sizeof(block_q8_1) : sizeof(block_q8_0))
#define CK_XQ(type) ((type) == CK_Q4_1 || (type) == CK_Q5_1 ? 4 : 2)

// Unsigned weight bytes of block `b` (q4_0/q4_1: 0..15, q5_0/q5_1: 0..31) or the signed bytes of q8_0.
CK_FN __m256i CK_SFX(legacy_q)(int type, const uint8_t *b) {
    switch (type) {
    case CK_Q4_0:
        return CK_SFX(nibbles32)(b + 2);
    case CK_Q4_1:
        return CK_SFX(nibbles32)(b + 4);
    case CK_Q5_0:
    case CK_Q5_1: {
        const int o = type == CK_Q5_0 ? 2 : 4;
        uint32_t qh;
        memcpy(&qh, b + o, 4);
#if CK_VNNI
        const __m256i hi = _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(0x10));
#else
        const __m256i hi = _mm256_and_si256(CK_SFX(bits32)(qh), _mm256_set1_epi8(0x10));
#endif
        return _mm256_or_si256(CK_SFX(nibbles32)(b + o + 4), hi);
    }
    default:  // CK_Q8_0
        return _mm256_loadu_si256((const __m256i *)(b + 2));
    }
}

// The weight-side correction factor of a block: dw (q4_0, q5_0) or m (q4_1, q5_1).
CK_FN float CK_SFX(legacy_cw)(int type, const uint8_t *b, float dw) {
    return (type == CK_Q4_1 || type == CK_Q5_1) ? CK_SFX(h2f)((uint16_t)(b[2] | (b[3] << 8))) : dw;
}

// Packed q8_0 arithmetic, for the output projection (ck_matmul flag CK_MATMUL_LOGITS): for every (weight row,
// activation row) pair and block b,
// the exact integer sums I_lo (elements 0..15) and I_hi (16..31) are folded into two float accumulators in block order,
//   acc_lo = fma(float(I_lo), d_w * d_x, acc_lo)      acc_hi = fma(float(I_hi), d_w * d_x, acc_hi)
// and y = acc_lo + acc_hi. The integer sums of 4 pairs are packed into one vector [p0 p1 p2 p3 | p0 p1 p2 p3]
// (low halves, then high halves), so one convert / multiply / FMA serves 4 pairs instead of one: about 20% less
// work per pair than the per-lane accumulation above. Layer projections keep ggml's per-lane order: their results
// are quantized again as the next layer's activations, where a different rounding moves the logits by as much as
// the reference's own noise (see ../shared/reference README); nothing downstream re-quantizes the logits.

// Exact 8-lane partial sums of one q8_0 pair: |w| . sign(x, w).
CK_FN __m256i CK_SFX(q8_lanes)(__m256i aq, __m256i q, __m256i xv) {
    return CK_SFX(dot_us8)(aq, _mm256_sign_epi8(xv, q));
}

// Four 8-lane sums a..d -> [a_lo b_lo c_lo d_lo | a_hi b_hi c_hi d_hi] (each 128-bit half summed, exact).
CK_FN __m256i CK_SFX(pack4)(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi64(c, d), _mm256_unpackhi_epi64(c, d));
    const __m256 p = _mm256_castsi256_ps(ab), q = _mm256_castsi256_ps(cd);
    return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(p, q, _MM_SHUFFLE(2, 0, 2, 0))),
                            _mm256_castps_si256(_mm256_shuffle_ps(p, q, _MM_SHUFFLE(3, 1, 3, 1))));
}

// y[k] = lane k + lane k+4 of acc, k < n.
CK_FN void CK_SFX(q8_store)(__m256 acc, float *y, size_t stride, int n) {
    float t[8] __attribute__((aligned(32)));
    _mm256_store_ps(t, acc);
    for (int k = 0; k < n; k++) y[k * stride] = t[k] + t[k + 4];
}

// Packed q8_0 mat-vec tile: R (1..4) weight rows read in place x one activation row.
CK_FN void CK_SFX(vec_q8p)(const uint8_t *w, size_t ws, const uint8_t *x, const float *dx, size_t nb, float *y,
                             const int R) {
    const size_t bsize = sizeof(block_q8_0);
    __m256 acc = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *pf = w + CK_PF * R * ws + b * R * bsize;
        for (size_t o = 0; o < R * bsize; o += 64) _mm_prefetch((const char *)(pf + o), _MM_HINT_T0);
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + b * bsize + 2));
        __m256i l[4];
        float d[4];
        for (int r = 0; r < 4; r++) {
            if (r < R) {
                const uint8_t *wb = w + r * ws + b * bsize;
                const __m256i q = _mm256_loadu_si256((const __m256i *)(wb + 2));
                l[r] = CK_SFX(q8_lanes)(_mm256_sign_epi8(q, q), q, xv);
                d[r] = CK_SFX(h2f)((uint16_t)(wb[0] | (wb[1] << 8)));
            } else {
                l[r] = _mm256_setzero_si256();
                d[r] = 0;
            }
        }
        const __m256 dwv = _mm256_setr_ps(d[0], d[1], d[2], d[3], d[0], d[1], d[2], d[3]);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(CK_SFX(pack4)(l[0], l[1], l[2], l[3])),
                              _mm256_mul_ps(dwv, _mm256_set1_ps(dx[b])), acc);
    }
    CK_SFX(q8_store)(acc, y, 1, R);
}

CK_FN void CK_SFX(vec_legacy)(int type, size_t bsize, const uint8_t *w, size_t ws, const uint8_t *x,
                               const float *dx, const float *u, size_t nb, float *y, const int R) {
    const int corr = type != CK_Q8_0;
    __m256 acc[CK_RMAX_LEGACY];
    float cwbuf[CK_RMAX_LEGACY][8] __attribute__((aligned(32)));
    for (int r = 0; r < R; r++) {
        acc[r] = _mm256_setzero_ps();
        for (int k = 0; k < 8; k++) cwbuf[r][k] = 0;
    }
    for (size_t b = 0; b < nb; b++) {
        // Mat-vec streams weights from memory: prefetch the matching slice of a later row tile.
        const uint8_t *pf = w + CK_PF * R * ws + b * R * bsize;
        for (size_t o = 0; o < R * bsize; o += 64) _mm_prefetch((const char *)(pf + o), _MM_HINT_T0);
        if (corr && (b & 7) == 0 && b + 8 > nb) {
            for (int r = 0; r < R; r++)
                for (int k = 0; k < 8; k++) cwbuf[r][k] = 0;
        }
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + b * CK_XB(type) + CK_XQ(type)));
        const __m256 dxv = _mm256_set1_ps(dx[b]);
        for (int r = 0; r < R; r++) {
            const uint8_t *wb = w + r * ws + b * bsize;
            const float d = CK_SFX(h2f)((uint16_t)(wb[0] | (wb[1] << 8)));
            const __m256i q = CK_SFX(legacy_q)(type, wb);
            __m256i lanes;
            if (corr) {
                cwbuf[r][b & 7] = CK_SFX(legacy_cw)(type, wb, d);
                lanes = CK_SFX(dot_us8)(q, xv);
            } else {
                lanes = CK_SFX(dot_us8)(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_mul_ps(_mm256_set1_ps(d), dxv), acc[r]);
        }
        if (corr && ((b & 7) == 7 || b + 1 == nb)) {
            const __m256 uv = _mm256_loadu_ps(u + (b & ~(size_t)7));
            for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(_mm256_load_ps(cwbuf[r]), uv, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) y[r] = CK_SFX(hsum)(acc[r]);
}

// Block b of R q8_0 rows read in place: the signed quants, their absolute values and the scale broadcast.
CK_FN void CK_SFX(q8_rows)(const uint8_t *w, size_t ws, size_t b, const int R, __m256i *q, __m256i *aq, __m256 *dwv) {
    for (int r = 0; r < R; r++) {
        const uint8_t *wb = w + r * ws + b * sizeof(block_q8_0);
        q[r] = _mm256_loadu_si256((const __m256i *)(wb + 2));
        aq[r] = _mm256_sign_epi8(q[r], q[r]);
        dwv[r] = _mm256_set1_ps(CK_SFX(h2f)((uint16_t)(wb[0] | (wb[1] << 8))));
    }
}

// q8_0 batch tile read straight from the blocks (q8_0 needs no unpacking): R weight rows x C activation rows.
// Each weight block is loaded once per tile and used for all C activation rows; the arithmetic per (row, act)
// pair is vec_legacy's for q8_0, so results are bitwise those of the mat-vec tiles.
// dx8: activation scales replicated 8 times, dx8[(c*nb + b)*8 ..] (a vector operand the compiler cannot scalarize,
// so d_w * d_x is one vector multiply per pair).
CK_FN void CK_SFX(batch_q8_0)(const uint8_t *w, size_t ws, size_t nb, const uint8_t *x, size_t xs,
                               const float *dx8, float *y, size_t ldy, const int R, const int C) {
    __m256 acc[CK_RMAX_LEGACY][CK_CMAX_LEGACY];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        __m256i q[CK_RMAX_LEGACY], aq[CK_RMAX_LEGACY];
        __m256 dwv[CK_RMAX_LEGACY];
        CK_SFX(q8_rows)(w, ws, b, R, q, aq, dwv);
        for (int c = 0; c < C; c++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + c * xs + b * sizeof(block_q8_0) + 2));
            const __m256 dxv = _mm256_load_ps(dx8 + (c * nb + b) * 8);
            for (int r = 0; r < R; r++) {
                const __m256i lanes = CK_SFX(dot_us8)(aq[r], _mm256_sign_epi8(xv, q[r]));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_mul_ps(dwv[r], dxv), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ldy + r] = CK_SFX(hsum)(acc[r][c]);
}

// Packed q8_0 batch tile (logits), read in place: R weight rows x C activation rows in groups of 4; results are
// bitwise those of vec_q8p.
// dx4: activation scales per group g of 4 rows and block b, [dx_4g .. dx_4g+3 | the same] at dx4 + (g*nb + b)*8,
// zero for rows past the last.
CK_FN void CK_SFX(batch_q8p)(const uint8_t *w, size_t ws, size_t nb, const uint8_t *x, size_t xs,
                               const float *dx4, float *y, size_t ldy, const int R, const int C) {
    enum { GMAX = (CK_CMAX_LEGACY + 3) / 4 };
    const int G = (C + 3) / 4;
    __m256 acc[CK_RMAX_LEGACY][GMAX];
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) acc[r][g] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        __m256i q[CK_RMAX_LEGACY], aq[CK_RMAX_LEGACY];
        __m256 dwv[CK_RMAX_LEGACY];
        CK_SFX(q8_rows)(w, ws, b, R, q, aq, dwv);
        for (int g = 0; g < G; g++) {
            __m256i xv[4];
            for (int k = 0; k < 4; k++)
                if (4 * g + k < C)
                    xv[k] = _mm256_loadu_si256((const __m256i *)(x + (4 * g + k) * xs + b * sizeof(block_q8_0) + 2));
            const __m256 dxv = _mm256_load_ps(dx4 + (g * nb + b) * 8);
            for (int r = 0; r < R; r++) {
                __m256i l[4];
                for (int k = 0; k < 4; k++)
                    l[k] = 4 * g + k < C ? CK_SFX(q8_lanes)(aq[r], q[r], xv[k]) : _mm256_setzero_si256();
                acc[r][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(CK_SFX(pack4)(l[0], l[1], l[2], l[3])),
                                            _mm256_mul_ps(dwv[r], dxv), acc[r][g]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) {
            const int n = C - 4 * g < 4 ? C - 4 * g : 4;
            CK_SFX(q8_store)(acc[r][g], y + (size_t)(4 * g) * ldy + r, ldy, n);
        }
}

// Batch layout of a legacy row (q4_0, q5_0, q4_1, q5_1; ck_repack stores whole matrices in it, the batch driver
// unpacks row tiles into it): `rs = ck_legacy_row_bytes(nb)` bytes per row,
//   [nb x 32 unsigned quant bytes][c_w: nb8 floats, zero padded][d_w: nb8 floats, zero padded]
// so a tile reads its rows at t + r*rs with no decoding.
CK_FN void CK_SFX(batch_legacy)(int type, const uint8_t *t, size_t rs, size_t nb, size_t nb8, const uint8_t *x,
                                 size_t xs, const float *dx, const float *u, float *y, size_t ldy, const int R,
                                 const int C) {
    __m256 acc[CK_RMAX_LEGACY][CK_CMAX_LEGACY];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        __m256i q[CK_RMAX_LEGACY];
        for (int r = 0; r < R; r++) q[r] = _mm256_load_si256((const __m256i *)(t + r * rs + b * 32));
        for (int c = 0; c < C; c++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + c * xs + b * CK_XB(type) + CK_XQ(type)));
            const __m256 dxv = _mm256_broadcast_ss(dx + c * nb + b);
            for (int r = 0; r < R; r++) {
                const __m256i lanes = CK_SFX(dot_us8)(q[r], xv);
                const __m256 dwv = _mm256_broadcast_ss((const float *)(t + r * rs + nb * 32) + nb8 + b);
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_mul_ps(dwv, dxv), acc[r][c]);
            }
        }
        if ((b & 7) == 7 || b + 1 == nb) {
            const size_t g = b & ~(size_t)7;
            for (int c = 0; c < C; c++) {
                const __m256 uv = _mm256_loadu_ps(u + c * nb8 + g);
                for (int r = 0; r < R; r++)
                    acc[r][c] = _mm256_fmadd_ps(_mm256_load_ps((const float *)(t + r * rs + nb * 32) + g), uv, acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ldy + r] = CK_SFX(hsum)(acc[r][c]);
}

// Writes rows [0, R) of a legacy matrix (not q8_0) in the batch layout above, rows rs bytes apart from t.
CK_FN void CK_SFX(unpack_legacy)(int type, size_t bsize, const uint8_t *w, size_t ws, size_t nb, size_t nb8, int R,
                                  uint8_t *t, size_t rs) {
    for (int r = 0; r < R; r++) {
        uint8_t *row = t + r * rs;
        float *cw = (float *)(row + nb * 32), *dw = cw + nb8;
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *wb = w + r * ws + b * bsize;
            _mm256_store_si256((__m256i *)(row + b * 32), CK_SFX(legacy_q)(type, wb));
            const float d = CK_SFX(h2f)((uint16_t)(wb[0] | (wb[1] << 8)));
            cw[b] = CK_SFX(legacy_cw)(type, wb, d);
            dw[b] = d;
        }
        for (size_t b = nb; b < nb8; b++) cw[b] = dw[b] = 0;
    }
}

// ------------------------------------------------------------------------------------------------------------
// q4_K against q8_K.
// lanes = sum over 8 sub-blocks of sc[s] * (4-byte sums of q4*q8); mins via bsums: lane i = m_i*(bsum[2i]+bsum[2i+1]).
// acc = fma(cvt(lanes), dx*d, acc); acc = fma(cvt(min lanes), -(dx*dmin), acc).
// ------------------------------------------------------------------------------------------------------------

CK_FN void CK_SFX(k4_scales)(const uint8_t *s12, uint8_t sc[8], __m256i *mins16) {
    uint32_t u[4];
    memcpy(u, s12, 12);
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    const uint32_t mlo = u[1] & k1;
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    u[2] = mlo;
    u[0] &= k1;
    memcpy(sc, u, 8);  // bytes 0..7 scales, 8..15 mins
    const __m128i m8 = _mm_set_epi32(0, 0, (int)u[3], (int)u[2]);
    *mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));  // m0 m0 m1 m1 ... m7 m7
}

CK_FN void CK_SFX(tile_q4_K)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t nb, float *y,
                              size_t ldy, const int R, const int C) {
    __m256 acc[CK_RMAX_K][CK_CMAX_K];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    for (size_t b = 0; b < nb; b++) {
        const block_q4_K *wb[CK_RMAX_K];
        uint8_t sc[CK_RMAX_K][8];
        __m256i mins16[CK_RMAX_K];
        __m256 dw[CK_RMAX_K], dmw[CK_RMAX_K];
        for (int r = 0; r < R; r++) {
            wb[r] = (const block_q4_K *)(w + r * ws) + b;
            CK_SFX(k4_scales)(wb[r]->scales, sc[r], &mins16[r]);
            dw[r] = _mm256_set1_ps(CK_SFX(h2f)(wb[r]->d));
            dmw[r] = _mm256_set1_ps(CK_SFX(h2f)(wb[r]->dmin));
        }
        const block_q8_K *xb[CK_CMAX_K];
        for (int c = 0; c < C; c++) xb[c] = (const block_q8_K *)(x + c * xs) + b;
        __m256i isum[CK_RMAX_K][CK_CMAX_K];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q[CK_RMAX_K][2], s16[CK_RMAX_K][2];
            for (int r = 0; r < R; r++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(wb[r]->qs + 32 * j));
                q[r][0] = _mm256_and_si256(raw, lo4);
                q[r][1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4);
                s16[r][0] = _mm256_set1_epi16(sc[r][2 * j]);
                s16[r][1] = _mm256_set1_epi16(sc[r][2 * j + 1]);
            }
            for (int c = 0; c < C; c++) {
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb[c]->qs + 64 * j));
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb[c]->qs + 64 * j + 32));
                for (int r = 0; r < R; r++) {
                    isum[r][c] = CK_SFX(madd_acc)(isum[r][c], _mm256_maddubs_epi16(q[r][0], x0), s16[r][0]);
                    isum[r][c] = CK_SFX(madd_acc)(isum[r][c], _mm256_maddubs_epi16(q[r][1], x1), s16[r][1]);
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_set1_ps(xb[c]->d);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)xb[c]->bsums);
            for (int r = 0; r < R; r++) {
                const __m256i ml = _mm256_madd_epi16(bs, mins16[r]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][c]), _mm256_mul_ps(dx, dw[r]), acc[r][c]);
                const __m256 negm = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dx, dmw[r]));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ml), negm, acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ldy + r] = CK_SFX(hsum)(acc[r][c]);
}

// ------------------------------------------------------------------------------------------------------------
// q6_K against q8_K. Unsigned 6-bit values q (0..63); the -32 offset comes from bsums:
// lanes = sum over 8 chunks of madd(maddubs(q, x), scales) - 32 * madd(bsums, scales).
// ------------------------------------------------------------------------------------------------------------

static const uint8_t CK_SFX(q6_scale_shuffle)[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

CK_FN void CK_SFX(tile_q6_K)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t nb, float *y,
                              size_t ldy, const int R, const int C) {
    __m256 acc[CK_RMAX_K][CK_CMAX_K];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    const __m256i lo4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    for (size_t b = 0; b < nb; b++) {
        const block_q6_K *wb[CK_RMAX_K];
        __m128i sc8[CK_RMAX_K];
        __m256 dw[CK_RMAX_K];
        for (int r = 0; r < R; r++) {
            wb[r] = (const block_q6_K *)(w + r * ws) + b;
            sc8[r] = _mm_loadu_si128((const __m128i *)wb[r]->scales);
            dw[r] = _mm256_set1_ps(CK_SFX(h2f)(wb[r]->d));
        }
        const block_q8_K *xb[CK_CMAX_K];
        for (int c = 0; c < C; c++) xb[c] = (const block_q8_K *)(x + c * xs) + b;
        __m256i isum[CK_RMAX_K][CK_CMAX_K];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            for (int qt = 0; qt < 4; qt++) {
                const int k = 4 * h + qt;  // 32-element chunk
                __m256i q[CK_RMAX_K], s16[CK_RMAX_K];
                for (int r = 0; r < R; r++) {
                    const __m256i A = _mm256_loadu_si256((const __m256i *)(wb[r]->ql + 64 * h + 32 * (qt & 1)));
                    const __m256i H = _mm256_loadu_si256((const __m256i *)(wb[r]->qh + 32 * h));
                    __m256i lo, hi;
                    switch (qt) {
                    case 0: lo = _mm256_and_si256(A, lo4); hi = _mm256_and_si256(_mm256_slli_epi16(H, 4), m30); break;
                    case 1: lo = _mm256_and_si256(A, lo4); hi = _mm256_and_si256(_mm256_slli_epi16(H, 2), m30); break;
                    case 2: lo = _mm256_and_si256(_mm256_srli_epi16(A, 4), lo4); hi = _mm256_and_si256(H, m30); break;
                    default: lo = _mm256_and_si256(_mm256_srli_epi16(A, 4), lo4); hi = _mm256_and_si256(_mm256_srli_epi16(H, 2), m30); break;
                    }
                    q[r] = _mm256_or_si256(lo, hi);
                    const __m128i sh = _mm_loadu_si128((const __m128i *)CK_SFX(q6_scale_shuffle)[k]);
                    s16[r] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8[r], sh));
                }
                for (int c = 0; c < C; c++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xb[c]->qs + 32 * k));
                    for (int r = 0; r < R; r++) {
                        isum[r][c] = CK_SFX(madd_acc)(isum[r][c], _mm256_maddubs_epi16(q[r], xv), s16[r]);
                    }
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_set1_ps(xb[c]->d);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)xb[c]->bsums);
            for (int r = 0; r < R; r++) {
                const __m256i off = _mm256_madd_epi16(bs, _mm256_cvtepi8_epi16(sc8[r]));
                const __m256i tot = _mm256_sub_epi32(isum[r][c], _mm256_slli_epi32(off, 5));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(dx, dw[r]), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ldy + r] = CK_SFX(hsum)(acc[r][c]);
}

// ------------------------------------------------------------------------------------------------------------
// K-quant batch tiles over rows unpacked once per row tile. Per row and super-block (CK_USB bytes):
//   q[256]       unsigned values in activation order (32-element chunk k = elements 32k..32k+31)
//   s16[8][16]   int16 scale vector of each chunk (q4_K: sc[k] x16; q6_K: sc[2k] x8, sc[2k+1] x8)
//   aux[16]      int16: q4_K mins duplicated per pair (m0 m0 m1 m1 ...); q6_K the 16 scales
//   d[8], dmin[8] floats, replicated
// The arithmetic is the mat-vec tiles' (tile_q4_K / tile_q6_K), so results are bitwise the same.
// ------------------------------------------------------------------------------------------------------------
#define CK_USB 640

CK_FN void CK_SFX(unpack_k)(int type, const uint8_t *w, size_t ws, size_t nsb, int R, uint8_t *out) {
    const __m256i lo4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    for (int r = 0; r < R; r++) {
        for (size_t b = 0; b < nsb; b++) {
            uint8_t *u = out + (r * nsb + b) * CK_USB;
            __m256i *q = (__m256i *)u, *s16 = (__m256i *)(u + 256), *aux = (__m256i *)(u + 512);
            float *d = (float *)(u + 544), *dmin = (float *)(u + 576);
            if (type == CK_Q4_K) {
                const block_q4_K *wb = (const block_q4_K *)(w + r * ws) + b;
                uint8_t sc[8];
                CK_SFX(k4_scales)(wb->scales, sc, aux);
                for (int j = 0; j < 4; j++) {
                    const __m256i raw = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * j));
                    _mm256_store_si256(q + 2 * j, _mm256_and_si256(raw, lo4));
                    _mm256_store_si256(q + 2 * j + 1, _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4));
                    _mm256_store_si256(s16 + 2 * j, _mm256_set1_epi16(sc[2 * j]));
                    _mm256_store_si256(s16 + 2 * j + 1, _mm256_set1_epi16(sc[2 * j + 1]));
                }
                _mm256_store_ps(d, _mm256_set1_ps(CK_SFX(h2f)(wb->d)));
                _mm256_store_ps(dmin, _mm256_set1_ps(CK_SFX(h2f)(wb->dmin)));
            } else if (type == CK_Q5_K) {
                const block_q5_K *wb = (const block_q5_K *)(w + r * ws) + b;
                uint8_t sc[8];
                CK_SFX(k4_scales)(wb->scales, sc, aux);
                const __m256i qh = _mm256_loadu_si256((const __m256i *)wb->qh);
                const __m256i one = _mm256_set1_epi8(1);
                for (int j = 0; j < 4; j++) {
                    const __m256i raw = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * j));
                    const __m128i sh0 = _mm_cvtsi32_si128(2 * j), sh1 = _mm_cvtsi32_si128(2 * j + 1);
                    const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, sh0), one), 4);
                    const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, sh1), one), 4);
                    _mm256_store_si256(q + 2 * j, _mm256_or_si256(_mm256_and_si256(raw, lo4), h0));
                    _mm256_store_si256(q + 2 * j + 1, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4), h1));
                    _mm256_store_si256(s16 + 2 * j, _mm256_set1_epi16(sc[2 * j]));
                    _mm256_store_si256(s16 + 2 * j + 1, _mm256_set1_epi16(sc[2 * j + 1]));
                }
                _mm256_store_ps(d, _mm256_set1_ps(CK_SFX(h2f)(wb->d)));
                _mm256_store_ps(dmin, _mm256_set1_ps(CK_SFX(h2f)(wb->dmin)));
            } else if (type == CK_Q2_K) {
                const block_q2_K *wb = (const block_q2_K *)(w + r * ws) + b;
                const __m256i three = _mm256_set1_epi8(3);
                for (int k = 0; k < 8; k++) {
                    const __m256i raw = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * (k / 4)));
                    const __m256i v = _mm256_srl_epi16(raw, _mm_cvtsi32_si128(2 * (k % 4)));
                    _mm256_store_si256(q + k, _mm256_and_si256(v, three));
                    _mm256_store_si256(s16 + k, _mm256_set_m128i(_mm_set1_epi16(wb->scales[2 * k + 1] & 0xF),
                                                                 _mm_set1_epi16(wb->scales[2 * k] & 0xF)));
                }
                const __m128i sc8 = _mm_loadu_si128((const __m128i *)wb->scales);
                _mm256_store_si256(aux, _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F))));
                _mm256_store_ps(d, _mm256_set1_ps(CK_SFX(h2f)(wb->d)));
                _mm256_store_ps(dmin, _mm256_set1_ps(CK_SFX(h2f)(wb->dmin)));
            } else if (type == CK_Q3_K) {
                const block_q3_K *wb = (const block_q3_K *)(w + r * ws) + b;
                int8_t sc[16];
                ck_q3k_scales(wb->scales, sc);
                const __m256i hm = _mm256_loadu_si256((const __m256i *)wb->hmask);
                const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
                for (int k = 0; k < 8; k++) {
                    const __m256i raw = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * (k / 4)));
                    const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(raw, _mm_cvtsi32_si128(2 * (k % 4))), three);
                    const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(k)), one);
                    _mm256_store_si256(q + k, _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2)));  // q + 4, in 0..7
                    _mm256_store_si256(s16 + k, _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k])));
                }
                _mm256_store_si256(aux, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc)));
                _mm256_store_ps(d, _mm256_set1_ps(CK_SFX(h2f)(wb->d)));
                _mm256_store_ps(dmin, _mm256_setzero_ps());
            } else {  // CK_Q6_K
                const block_q6_K *wb = (const block_q6_K *)(w + r * ws) + b;
                const __m128i sc8 = _mm_loadu_si128((const __m128i *)wb->scales);
                for (int h = 0; h < 2; h++) {
                    const __m256i A0 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h));
                    const __m256i A1 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h + 32));
                    const __m256i H = _mm256_loadu_si256((const __m256i *)(wb->qh + 32 * h));
                    _mm256_store_si256(q + 4 * h + 0, _mm256_or_si256(_mm256_and_si256(A0, lo4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)));
                    _mm256_store_si256(q + 4 * h + 1, _mm256_or_si256(_mm256_and_si256(A1, lo4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)));
                    _mm256_store_si256(q + 4 * h + 2, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A0, 4), lo4), _mm256_and_si256(H, m30)));
                    _mm256_store_si256(q + 4 * h + 3, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A1, 4), lo4), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30)));
                }
                for (int k = 0; k < 8; k++) {
                    const __m128i sh = _mm_loadu_si128((const __m128i *)CK_SFX(q6_scale_shuffle)[k]);
                    _mm256_store_si256(s16 + k, _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, sh)));
                }
                _mm256_store_si256(aux, _mm256_cvtepi8_epi16(sc8));
                _mm256_store_ps(d, _mm256_set1_ps(CK_SFX(h2f)(wb->d)));
                _mm256_store_ps(dmin, _mm256_setzero_ps());
            }
        }
    }
}

CK_FN void CK_SFX(batch_k)(int type, const uint8_t *uw, size_t nsb, const uint8_t *x, size_t xs, float *y,
                            size_t ldy, const int R, const int C) {
    __m256 acc[CK_RMAX_K][CK_CMAX_K];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (size_t b = 0; b < nsb; b++) {
        const block_q8_K *xb[CK_CMAX_K];
        for (int c = 0; c < C; c++) xb[c] = (const block_q8_K *)(x + c * xs) + b;
        const uint8_t *u[CK_RMAX_K];
        for (int r = 0; r < R; r++) u[r] = uw + (r * nsb + b) * CK_USB;
        __m256i isum[CK_RMAX_K][CK_CMAX_K];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
        for (int k = 0; k < 8; k++) {
            __m256i q[CK_RMAX_K];
            for (int r = 0; r < R; r++) q[r] = _mm256_load_si256((const __m256i *)(u[r] + 32 * k));
            for (int c = 0; c < C; c++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xb[c]->qs + 32 * k));
                for (int r = 0; r < R; r++) {
                    const __m256i s16 = _mm256_load_si256((const __m256i *)(u[r] + 256 + 32 * k));
                    isum[r][c] = CK_SFX(madd_acc)(isum[r][c], _mm256_maddubs_epi16(q[r], xv), s16);
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_set1_ps(xb[c]->d);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)xb[c]->bsums);
            for (int r = 0; r < R; r++) {
                const __m256i aux = _mm256_load_si256((const __m256i *)(u[r] + 512));
                const __m256 dw = _mm256_load_ps((const float *)(u[r] + 544));
                if (type == CK_Q4_K || type == CK_Q5_K || type == CK_Q2_K) {
                    const __m256i ml = _mm256_madd_epi16(bs, aux);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][c]), _mm256_mul_ps(dx, dw), acc[r][c]);
                    const __m256 dmw = _mm256_load_ps((const float *)(u[r] + 576));
                    const __m256 negm = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dx, dmw));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ml), negm, acc[r][c]);
                } else {
                    const __m256i off = _mm256_madd_epi16(bs, aux);
                    const __m256i tot = _mm256_sub_epi32(isum[r][c], _mm256_slli_epi32(off, type == CK_Q3_K ? 2 : 5));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(dx, dw), acc[r][c]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[c * ldy + r] = CK_SFX(hsum)(acc[r][c]);
}

// ------------------------------------------------------------------------------------------------------------
// f32 / f16 / bf16 weights against activations of the same type: per pair one 8-lane FMA accumulator over the
// first cols - cols % 8 elements, horizontal sum, then the remaining products added one by one in order.
// ------------------------------------------------------------------------------------------------------------

CK_FN __m256 CK_SFX(load8)(int type, const uint8_t *p, size_t i) {
    switch (type) {
    case CK_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
    case CK_BF16: return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i))), 16));
    default: return _mm256_loadu_ps((const float *)(p + 4 * i));
    }
}

CK_FN float CK_SFX(load1)(int type, const uint8_t *p, size_t i) {
    uint16_t h;
    switch (type) {
    case CK_F16: memcpy(&h, p + 2 * i, 2); return CK_SFX(h2f)(h);
    case CK_BF16: memcpy(&h, p + 2 * i, 2); return ck_bf2f(h);
    default: { float f; memcpy(&f, p + 4 * i, 4); return f; }
    }
}

CK_FN void CK_SFX(tile_float)(int type, const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t n,
                               float *y, size_t ldy, const int R, const int C) {
    __m256 acc[CK_RMAX_K][CK_CMAX_K];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    const size_t n8 = n & ~(size_t)7;
    for (size_t i = 0; i < n8; i += 8) {
        __m256 wv[CK_RMAX_K];
        for (int r = 0; r < R; r++) wv[r] = CK_SFX(load8)(type, w + r * ws, i);
        for (int c = 0; c < C; c++) {
            const __m256 xv = CK_SFX(load8)(type, x + c * xs, i);
            for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C; c++) {
            float sum = CK_SFX(hsum)(acc[r][c]);
            for (size_t i = n8; i < n; i++) sum += CK_SFX(load1)(type, w + r * ws, i) * CK_SFX(load1)(type, x + c * xs, i);
            y[c * ldy + r] = sum;
        }
    }
}

#define CK_FT(T, TYPE, R, C)                                                                                    \
    CK_KERNEL void CK_NAME(T, R, C)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t n, float *y, \
                                    size_t ldy) {                                                               \
        CK_SFX(tile_float)(TYPE, w, ws, x, xs, n, y, ldy, R, C);                                                \
    }
#define CK_FT_ALL(T, TYPE) CK_FT(T, TYPE, 4, 1) CK_FT(T, TYPE, 1, 1) CK_FT(T, TYPE, 2, 4) CK_FT(T, TYPE, 1, 4) \
    CK_FT(T, TYPE, 2, 1) CK_FT(T, TYPE, 2, 2) CK_FT(T, TYPE, 2, 3) CK_FT(T, TYPE, 1, 2) CK_FT(T, TYPE, 1, 3)
CK_FT_ALL(f32, CK_F32)
CK_FT_ALL(f16, CK_F16)
CK_FT_ALL(bf16, CK_BF16)

typedef void (*CK_SFX(float_fn))(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t n, float *y, size_t ldy);
typedef struct {
    CK_SFX(float_fn) vec4, vec1, batch[4], single[4];
} CK_SFX(float_set);
#define CK_FSET(T) {CK_NAME(T, 4, 1), CK_NAME(T, 1, 1), {CK_NAME(T, 2, 1), CK_NAME(T, 2, 2), CK_NAME(T, 2, 3), CK_NAME(T, 2, 4)}, \
                    {CK_NAME(T, 1, 1), CK_NAME(T, 1, 2), CK_NAME(T, 1, 3), CK_NAME(T, 1, 4)}}
static const CK_SFX(float_set) CK_SFX(fset_f32) = CK_FSET(f32);
static const CK_SFX(float_set) CK_SFX(fset_f16) = CK_FSET(f16);
static const CK_SFX(float_set) CK_SFX(fset_bf16) = CK_FSET(bf16);

static int CK_SFX(drive_float)(const CK_SFX(float_set) *set, size_t n, const uint8_t *w, size_t ws, size_t r0,
                               size_t r1, const uint8_t *x, size_t xs, size_t nx, float *y, size_t ldy) {
    if (nx == 1) {
        size_t r = r0;
        for (; r + 4 <= r1; r += 4) set->vec4(w + r * ws, ws, x, xs, n, y + r, ldy);
        for (; r < r1; r++) set->vec1(w + r * ws, ws, x, xs, n, y + r, ldy);
        return 0;
    }
    size_t jb = (size_t)(256 * 1024) / (xs ? xs : 1);
    jb = jb < 4 ? 4 : (jb / 4) * 4;
    for (size_t j0 = 0; j0 < nx; j0 += jb) {
        const size_t j1 = j0 + jb < nx ? j0 + jb : nx;
        for (size_t r = r0; r < r1;) {
            const int R = r + 2 <= r1 ? 2 : 1;
            const CK_SFX(float_fn) *fns = R == 2 ? set->batch : set->single;
            size_t j = j0;
            for (; j + 4 <= j1; j += 4) fns[3](w + r * ws, ws, x + j * xs, xs, n, y + j * ldy + r, ldy);
            if (j < j1) fns[j1 - j - 1](w + r * ws, ws, x + j * xs, xs, n, y + j * ldy + r, ldy);
            r += (size_t)R;
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------------------------
// Tile instantiations and drivers.
// ------------------------------------------------------------------------------------------------------------


typedef void (*CK_SFX(tile_fn))(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t nb, float *y, size_t ldy);

#define CK_INST_K(T, R, C)                                                                                      \
    CK_KERNEL void CK_NAME(T, R, C)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t nb, \
                                         float *y, size_t ldy) {                                              \
        CK_SFX(tile_##T)(w, ws, x, xs, nb, y, ldy, R, C);                                                     \
    }

#define CK_INST_K_ROWS(T, R) CK_INST_K(T, R, 1) CK_INST_K(T, R, 2) CK_INST_K(T, R, 3) CK_INST_K(T, R, 4)

CK_INST_K(q4_K, 1, 1)
CK_KERNEL void CK_SFX(q4_K_vec4)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t nb, float *y, size_t ldy) {
    CK_SFX(tile_q4_K)(w, ws, x, xs, nb, y, ldy, 4, 1);
}
CK_INST_K(q6_K, 1, 1)
CK_KERNEL void CK_SFX(q6_K_vec4)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, size_t nb, float *y, size_t ldy) {
    CK_SFX(tile_q6_K)(w, ws, x, xs, nb, y, ldy, 4, 1);
}

#define CK_TABLE(T, R) {CK_NAME(T, R, 1), CK_NAME(T, R, 2), CK_NAME(T, R, 3), CK_NAME(T, R, 4), \
                        CK_NAME(T, R, 5), CK_NAME(T, R, 6), CK_NAME(T, R, 7), CK_NAME(T, R, 8)}

// K-quant kernels: mat-vec tiles (4 rows, 1 row) over the blocks, batch tiles (CK_RB_K rows, 1 row) x 1..4 acts
// over unpacked rows.
typedef void (*CK_SFX(kbatch_fn))(const uint8_t *uw, size_t nsb, const uint8_t *x, size_t xs, float *y, size_t ldy);

#define CK_KB(T, TYPE, R, C)                                                                                    \
    CK_KERNEL void CK_NAME(T, u##R, C)(const uint8_t *uw, size_t nsb, const uint8_t *x, size_t xs, float *y,    \
                                       size_t ldy) {                                                           \
        CK_SFX(batch_k)(TYPE, uw, nsb, x, xs, y, ldy, R, C);                                                   \
    }
#define CK_KB_ROWS(T, TYPE, R) CK_KB(T, TYPE, R, 1) CK_KB(T, TYPE, R, 2) CK_KB(T, TYPE, R, 3) CK_KB(T, TYPE, R, 4) \
    CK_KB(T, TYPE, R, 5) CK_KB(T, TYPE, R, 6) CK_KB(T, TYPE, R, 7) CK_KB(T, TYPE, R, 8)
CK_KB_ROWS(q4_K, CK_Q4_K, 1)
CK_KB_ROWS(q6_K, CK_Q6_K, 1)
CK_KB_ROWS(q2_K, CK_Q2_K, 1)
CK_KB_ROWS(q3_K, CK_Q3_K, 1)
CK_KB_ROWS(q5_K, CK_Q5_K, 1)
#if CK_RB_K > 1
CK_KB_ROWS(q4_K, CK_Q4_K, CK_RB_K)
CK_KB_ROWS(q6_K, CK_Q6_K, CK_RB_K)
CK_KB_ROWS(q2_K, CK_Q2_K, CK_RB_K)
CK_KB_ROWS(q3_K, CK_Q3_K, CK_RB_K)
CK_KB_ROWS(q5_K, CK_Q5_K, CK_RB_K)
#endif

typedef struct {
    CK_SFX(tile_fn) vec4, vec1;
    CK_SFX(kbatch_fn) batch[8], single[8];
} CK_SFX(k_set);

#define CK_KTABLE(T, R) {CK_NAME(T, u##R, 1), CK_NAME(T, u##R, 2), CK_NAME(T, u##R, 3), CK_NAME(T, u##R, 4), \
                         CK_NAME(T, u##R, 5), CK_NAME(T, u##R, 6), CK_NAME(T, u##R, 7), CK_NAME(T, u##R, 8)}
#define CK_KTABLE_X(T, R) CK_KTABLE(T, R)
static const CK_SFX(k_set) CK_SFX(kset_q4_K) = {CK_SFX(q4_K_vec4), CK_NAME(q4_K, 1, 1), CK_KTABLE_X(q4_K, CK_RB_K), CK_KTABLE(q4_K, 1)};
static const CK_SFX(k_set) CK_SFX(kset_q6_K) = {CK_SFX(q6_K_vec4), CK_NAME(q6_K, 1, 1), CK_KTABLE_X(q6_K, CK_RB_K), CK_KTABLE(q6_K, 1)};
// No direct mat-vec tiles: these types always go through unpacked rows.
static const CK_SFX(k_set) CK_SFX(kset_q2_K) = {0, 0, CK_KTABLE_X(q2_K, CK_RB_K), CK_KTABLE(q2_K, 1)};
static const CK_SFX(k_set) CK_SFX(kset_q3_K) = {0, 0, CK_KTABLE_X(q3_K, CK_RB_K), CK_KTABLE(q3_K, 1)};
static const CK_SFX(k_set) CK_SFX(kset_q5_K) = {0, 0, CK_KTABLE_X(q5_K, CK_RB_K), CK_KTABLE(q5_K, 1)};

__attribute__((target(CK_TARGET)))
static int CK_SFX(drive_k)(int type, const CK_SFX(k_set) *set, size_t cols, const uint8_t *w, size_t ws, size_t r0,
                           size_t r1, const uint8_t *x, size_t xs, size_t nx, float *y, size_t ldy) {
    const size_t nsb = cols / QK_K;
    if (nx == 1 && set->vec4) {
        size_t r = r0;
        for (; r + 4 <= r1; r += 4) set->vec4(w + r * ws, ws, x, xs, nsb, y + r, ldy);
        for (; r < r1; r++) set->vec1(w + r * ws, ws, x, xs, nsb, y + r, ldy);
        return 0;
    }
    const size_t rb = CK_RB_K;
    uint8_t *uw = aligned_alloc(64, rb * nsb * CK_USB + 64);
    if (!uw) return -1;
    size_t jb = (size_t)(256 * 1024) / (xs ? xs : 1);
    jb = jb < 4 ? 4 : (jb / 4) * 4;
    for (size_t j0 = 0; j0 < nx; j0 += jb) {
        const size_t j1 = j0 + jb < nx ? j0 + jb : nx;
        for (size_t r = r0; r < r1;) {
            const int R = r + rb <= r1 ? (int)rb : 1;
            CK_SFX(unpack_k)(type, w + r * ws, ws, nsb, R, uw);
            const CK_SFX(kbatch_fn) *fns = R == (int)rb ? set->batch : set->single;
            size_t j = j0;
            for (; j + CK_CB_K <= j1; j += CK_CB_K) fns[CK_CB_K - 1](uw, nsb, x + j * xs, xs, y + j * ldy + r, ldy);
            if (j < j1) fns[j1 - j - 1](uw, nsb, x + j * xs, xs, y + j * ldy + r, ldy);
            r += (size_t)R;
        }
    }
    free(uw);
    return 0;
}

// Legacy kernels: per type, mat-vec tiles (4 rows, 1 row) and batch tiles (CK_RB_LEGACY rows, 1 row) x 1..4 acts.
typedef void (*CK_SFX(vec_fn))(const uint8_t *w, size_t ws, const uint8_t *x, const float *dx, const float *u,
                               size_t nb, float *y);
typedef void (*CK_SFX(batch_fn))(const uint8_t *t, size_t rs, size_t nb, size_t nb8, const uint8_t *x, size_t xs,
                                 const float *dx, const float *u, float *y, size_t ldy);

#define CK_LEG_VEC(T, TYPE, R)                                                                                  \
    CK_KERNEL void CK_NAME(T, v, R)(const uint8_t *w, size_t ws, const uint8_t *x, const float *dx,              \
                                    const float *u, size_t nb, float *y) {                                      \
        CK_SFX(vec_legacy)(TYPE, sizeof(block_##T), w, ws, x, dx, u, nb, y, R);                                  \
    }
#define CK_LEG_BATCH(T, TYPE, R, C)                                                                             \
    CK_KERNEL void CK_NAME(T, R, C)(const uint8_t *t, size_t rs, size_t nb, size_t nb8, const uint8_t *x,       \
                                    size_t xs, const float *dx, const float *u, float *y, size_t ldy) {        \
        CK_SFX(batch_legacy)(TYPE, t, rs, nb, nb8, x, xs, dx, u, y, ldy, R, C);                                  \
    }
#define CK_LEG_ROWS(T, TYPE, R)                                                                                 \
    CK_LEG_BATCH(T, TYPE, R, 1) CK_LEG_BATCH(T, TYPE, R, 2) CK_LEG_BATCH(T, TYPE, R, 3) CK_LEG_BATCH(T, TYPE, R, 4) \
    CK_LEG_BATCH(T, TYPE, R, 5) CK_LEG_BATCH(T, TYPE, R, 6) CK_LEG_BATCH(T, TYPE, R, 7) CK_LEG_BATCH(T, TYPE, R, 8)
#if CK_RB_LEGACY > 1
#define CK_LEG_ALL(T, TYPE) CK_LEG_VEC(T, TYPE, 4) CK_LEG_VEC(T, TYPE, 1) CK_LEG_ROWS(T, TYPE, 1) CK_LEG_ROWS(T, TYPE, CK_RB_LEGACY)
#else
#define CK_LEG_ALL(T, TYPE) CK_LEG_VEC(T, TYPE, 4) CK_LEG_VEC(T, TYPE, 1) CK_LEG_ROWS(T, TYPE, 1)
#endif

CK_LEG_ALL(q4_0, CK_Q4_0)
CK_LEG_ALL(q5_0, CK_Q5_0)
CK_LEG_VEC(q8_0, CK_Q8_0, 4) CK_LEG_VEC(q8_0, CK_Q8_0, 1)  // q8_0 batches use the in-place tiles below
CK_LEG_ALL(q4_1, CK_Q4_1)
CK_LEG_ALL(q5_1, CK_Q5_1)

// q8_0 batch tiles read in place, CK_RB_Q8 rows and 1 row x 1..CK_CB_Q8 activation rows: q8d (per-lane order,
// batch_q8_0, dx8 scales) and q8p (packed order for logits, batch_q8p, dx4 scales).
typedef void (*CK_SFX(q8_fn))(const uint8_t *w, size_t ws, size_t nb, const uint8_t *x, size_t xs,
                              const float *dxs, float *y, size_t ldy);
#define CK_Q8B(P, BODY, R, C)                                                                                   \
    CK_KERNEL void CK_NAME(P, R, C)(const uint8_t *w, size_t ws, size_t nb, const uint8_t *x, size_t xs,        \
                                    const float *dxs, float *y, size_t ldy) {                                   \
        CK_SFX(BODY)(w, ws, nb, x, xs, dxs, y, ldy, R, C);                                                        \
    }
#define CK_Q8B_ROWS(P, BODY, R) CK_Q8B(P, BODY, R, 1) CK_Q8B(P, BODY, R, 2) CK_Q8B(P, BODY, R, 3)                \
    CK_Q8B(P, BODY, R, 4) CK_Q8B(P, BODY, R, 5) CK_Q8B(P, BODY, R, 6) CK_Q8B(P, BODY, R, 7) CK_Q8B(P, BODY, R, 8)
CK_Q8B_ROWS(q8d, batch_q8_0, 1)
CK_Q8B_ROWS(q8p, batch_q8p, 1)
#if CK_RB_Q8 > 1
CK_Q8B_ROWS(q8d, batch_q8_0, CK_RB_Q8)
CK_Q8B_ROWS(q8p, batch_q8p, CK_RB_Q8)
#endif
#define CK_Q8TABLE(P, R) {CK_NAME(P, R, 1), CK_NAME(P, R, 2), CK_NAME(P, R, 3), CK_NAME(P, R, 4), \
                          CK_NAME(P, R, 5), CK_NAME(P, R, 6), CK_NAME(P, R, 7), CK_NAME(P, R, 8)}
#define CK_Q8TABLE_X(P, R) CK_Q8TABLE(P, R)
static const CK_SFX(q8_fn) CK_SFX(q8d_batch)[8] = CK_Q8TABLE_X(q8d, CK_RB_Q8);
static const CK_SFX(q8_fn) CK_SFX(q8d_single)[8] = CK_Q8TABLE(q8d, 1);
static const CK_SFX(q8_fn) CK_SFX(q8p_batch)[8] = CK_Q8TABLE_X(q8p, CK_RB_Q8);
static const CK_SFX(q8_fn) CK_SFX(q8p_single)[8] = CK_Q8TABLE(q8p, 1);
// Packed mat-vec tiles of 4 and 1 rows.
CK_KERNEL void CK_SFX(q8p_v4)(const uint8_t *w, size_t ws, const uint8_t *x, const float *dx, size_t nb, float *y) {
    CK_SFX(vec_q8p)(w, ws, x, dx, nb, y, 4);
}
CK_KERNEL void CK_SFX(q8p_v1)(const uint8_t *w, size_t ws, const uint8_t *x, const float *dx, size_t nb, float *y) {
    CK_SFX(vec_q8p)(w, ws, x, dx, nb, y, 1);
}

typedef struct {
    CK_SFX(vec_fn) vec4, vec1;
    CK_SFX(batch_fn) batch[8], single[8];
} CK_SFX(legacy_set);

#define CK_LEG_SET(T)                                                                                           \
    {CK_NAME(T, v, 4), CK_NAME(T, v, 1), CK_TABLE(T, CK_RB_LEGACY), CK_TABLE(T, 1)}
static const CK_SFX(legacy_set) CK_SFX(leg_q4_0) = CK_LEG_SET(q4_0);
static const CK_SFX(legacy_set) CK_SFX(leg_q5_0) = CK_LEG_SET(q5_0);
static const CK_SFX(legacy_set) CK_SFX(leg_q8_0) = {CK_NAME(q8_0, v, 4), CK_NAME(q8_0, v, 1), {0}, {0}};
static const CK_SFX(legacy_set) CK_SFX(leg_q4_1) = CK_LEG_SET(q4_1);
static const CK_SFX(legacy_set) CK_SFX(leg_q5_1) = CK_LEG_SET(q5_1);

__attribute__((target(CK_TARGET)))
static int CK_SFX(drive_legacy)(int type, int packed, const CK_SFX(legacy_set) *set, size_t cols, const uint8_t *w,
                                size_t ws, const uint8_t *wbatch, size_t r0, size_t r1, const uint8_t *x, size_t xs,
                                size_t nx, float *y, size_t ldy) {
    const size_t bsize = ck_type_size(type), nb = cols / QK, nb8 = (nb + 7) & ~(size_t)7;
    const int off = type == CK_Q4_0 ? 8 : type == CK_Q5_0 ? 16 : 0;
    // Activation side: dx[j*nb + b], u[j*nb8 + b].
    const size_t rb = CK_RB_LEGACY;
    const size_t xfloats = nx * (nb + nb8);
    const size_t rs = ck_legacy_row_bytes(nb);
    const size_t wbytes = type == CK_Q8_0 || wbatch ? 0 : rb * rs;
    float stack_buf[2048] __attribute__((aligned(64)));
    float *xbuf = stack_buf;
    uint8_t *heap = NULL;
    const size_t need = xfloats * 4 + (nx > 1 ? wbytes + 64 : 0);
    if (need > sizeof(stack_buf)) {
        heap = aligned_alloc(64, (need + 63) & ~(size_t)63);
        if (!heap) return -1;
        xbuf = (float *)heap;
    }
    float *dx = xbuf, *u = xbuf + nx * nb;
    const int q8_1 = type == CK_Q4_1 || type == CK_Q5_1;
    for (size_t j = 0; j < nx; j++) {
        for (size_t b = 0; b < nb; b++) {
            if (q8_1) {
                const block_q8_1 *xb = (const block_q8_1 *)(x + j * xs) + b;
                dx[j * nb + b] = CK_SFX(h2f)(xb->d);
                u[j * nb8 + b] = CK_SFX(h2f)(xb->s);
            } else {
                const block_q8_0 *xb = (const block_q8_0 *)(x + j * xs) + b;
                const float d = CK_SFX(h2f)(xb->d);
                dx[j * nb + b] = d;
                if (off) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)xb->qs);
                    const __m256i s8 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), xv), _mm256_set1_epi16(1));
                    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
                    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
                    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
                    const int sum = _mm_cvtsi128_si32(s4);
                    u[j * nb8 + b] = -(d * (float)(off * sum));
                }
            }
        }
        for (size_t b = nb; b < nb8; b++) u[j * nb8 + b] = 0;
    }
    if (nx == 1) {
        size_t r = r0;
        if (packed) {
            for (; r + 4 <= r1; r += 4) CK_SFX(q8p_v4)(w + r * ws, ws, x, dx, nb, y + r);
            for (; r < r1; r++) CK_SFX(q8p_v1)(w + r * ws, ws, x, dx, nb, y + r);
        } else {
            for (; r + 4 <= r1; r += 4) set->vec4(w + r * ws, ws, x, dx, u, nb, y + r);
            for (; r < r1; r++) set->vec1(w + r * ws, ws, x, dx, u, nb, y + r);
        }
    } else if (type == CK_Q8_0) {
        // Row tiles of CK_RB_Q8 weight rows read in place; each tile runs over all activation rows (in groups of
        // CK_CB_Q8) while its blocks are in L1.
        const size_t rb8 = CK_RB_Q8;
        // Activation scales: dx8 replicated 8 times per (row, block) for the per-lane tiles, or dx4 in groups of 4
        // rows for the packed ones (see batch_q8_0 / batch_q8p).
        _Static_assert(CK_CB_Q8 % 4 == 0, "packed q8_0 activation tiles start on groups of 4 rows");
        const size_t ng = (nx + 3) / 4;
        float *dxs = aligned_alloc(64, (packed ? ng * nb : nx * nb) * 8 * sizeof(float));
        if (!dxs) {
            free(heap);
            return -1;
        }
        if (packed) {
            for (size_t g = 0; g < ng; g++)
                for (size_t b = 0; b < nb; b++)
                    for (size_t k = 0; k < 4; k++) {
                        const size_t j = 4 * g + k;
                        const float v = j < nx ? dx[j * nb + b] : 0.0f;
                        dxs[(g * nb + b) * 8 + k] = v;
                        dxs[(g * nb + b) * 8 + k + 4] = v;
                    }
        } else {
            for (size_t i = 0; i < nx * nb; i++) _mm256_store_ps(dxs + i * 8, _mm256_set1_ps(dx[i]));
        }
        // Offset of activation row j's scales (j is a multiple of 4 for the packed tiles).
#define CK_DXS(j) (packed ? dxs + (j) / 4 * nb * 8 : dxs + (j) * nb * 8)
        size_t jb = (size_t)(256 * 1024) / (xs ? xs : 1);
        jb = jb < 4 ? 4 : (jb / 4) * 4;
        for (size_t j0 = 0; j0 < nx; j0 += jb) {
            const size_t j1 = j0 + jb < nx ? j0 + jb : nx;
            for (size_t r = r0; r < r1;) {
                const int R = r + rb8 <= r1 ? (int)rb8 : 1;
                const CK_SFX(q8_fn) *fns = packed ? (R == (int)rb8 ? CK_SFX(q8p_batch) : CK_SFX(q8p_single))
                                                  : (R == (int)rb8 ? CK_SFX(q8d_batch) : CK_SFX(q8d_single));
                size_t j = j0;
                for (; j + CK_CB_Q8 <= j1; j += CK_CB_Q8)
                    fns[CK_CB_Q8 - 1](w + r * ws, ws, nb, x + j * xs, xs, CK_DXS(j), y + j * ldy + r, ldy);
                if (j < j1) fns[j1 - j - 1](w + r * ws, ws, nb, x + j * xs, xs, CK_DXS(j), y + j * ldy + r, ldy);
                r += (size_t)R;
            }
        }
#undef CK_DXS
        free(dxs);
    } else {
        // Row tiles in the batch layout: read from the matrix's batch copy, or unpacked here once per tile.
        uint8_t *wsc = (uint8_t *)(((uintptr_t)(xbuf + xfloats) + 63) & ~(uintptr_t)63);
        size_t jb = (size_t)(256 * 1024) / (xs ? xs : 1);
        jb = jb < 4 ? 4 : (jb / 4) * 4;
        for (size_t j0 = 0; j0 < nx; j0 += jb) {
            const size_t j1 = j0 + jb < nx ? j0 + jb : nx;
            for (size_t r = r0; r < r1;) {
                const int R = r + rb <= r1 ? (int)rb : 1;
                const uint8_t *t = wsc;
                if (wbatch) {
                    t = wbatch + r * rs;
                    // The copy streams from memory: fetch a later tile while this one computes.
                    const uint8_t *pf = t + CK_PF * rb * rs;
                    if (pf + rb * rs <= wbatch + r1 * rs)
                        for (size_t o = 0; o < rb * rs; o += 64) _mm_prefetch((const char *)(pf + o), _MM_HINT_T0);
                } else {
                    CK_SFX(unpack_legacy)(type, bsize, w + r * ws, ws, nb, nb8, R, wsc, rs);
                }
                const CK_SFX(batch_fn) *fns = R == (int)rb ? set->batch : set->single;
                size_t j = j0;
                for (; j + CK_CB_LEGACY <= j1; j += CK_CB_LEGACY)
                    fns[CK_CB_LEGACY - 1](t, rs, nb, nb8, x + j * xs, xs, dx + j * nb, u + j * nb8, y + j * ldy + r, ldy);
                if (j < j1) fns[j1 - j - 1](t, rs, nb, nb8, x + j * xs, xs, dx + j * nb, u + j * nb8, y + j * ldy + r, ldy);
                r += (size_t)R;
            }
        }
    }
    free(heap);
    return 0;
}

// ck_repack: rows [0, rows) of a legacy matrix into the batch layout.
__attribute__((target(CK_TARGET)))
static void CK_SFX(repack_legacy)(int type, size_t cols, const uint8_t *w, size_t ws, size_t rows, uint8_t *out) {
    const size_t nb = cols / QK, nb8 = (nb + 7) & ~(size_t)7, rs = ck_legacy_row_bytes(nb);
    for (size_t r = 0; r < rows; r++) CK_SFX(unpack_legacy)(type, ck_type_size(type), w + r * ws, ws, nb, nb8, 1, out + r * rs, rs);
}

static int CK_SFX(ck_matmul_impl)(int type, int flags, size_t cols, const void *w, size_t w_stride, const void *wbatch,
                                  size_t r0, size_t r1,
                      const void *x, size_t x_stride, size_t nx, float *y, size_t ldy) {
    switch (type) {
    case CK_Q4_0: return CK_SFX(drive_legacy)(type, 0, &CK_SFX(leg_q4_0), cols, w, w_stride, wbatch, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q5_0: return CK_SFX(drive_legacy)(type, 0, &CK_SFX(leg_q5_0), cols, w, w_stride, wbatch, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q8_0: return CK_SFX(drive_legacy)(type, (flags & CK_MATMUL_LOGITS) != 0, &CK_SFX(leg_q8_0), cols, w, w_stride, wbatch, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q4_1: return CK_SFX(drive_legacy)(type, 0, &CK_SFX(leg_q4_1), cols, w, w_stride, wbatch, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q5_1: return CK_SFX(drive_legacy)(type, 0, &CK_SFX(leg_q5_1), cols, w, w_stride, wbatch, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q4_K: return CK_SFX(drive_k)(type, &CK_SFX(kset_q4_K), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q6_K: return CK_SFX(drive_k)(type, &CK_SFX(kset_q6_K), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q2_K: return CK_SFX(drive_k)(type, &CK_SFX(kset_q2_K), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q3_K: return CK_SFX(drive_k)(type, &CK_SFX(kset_q3_K), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_Q5_K: return CK_SFX(drive_k)(type, &CK_SFX(kset_q5_K), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_F32: return CK_SFX(drive_float)(&CK_SFX(fset_f32), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_F16: return CK_SFX(drive_float)(&CK_SFX(fset_f16), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    case CK_BF16: return CK_SFX(drive_float)(&CK_SFX(fset_bf16), cols, w, w_stride, r0, r1, x, x_stride, nx, y, ldy);
    default: return -1;
    }
}

#undef CK_XB
#undef CK_XQ
#undef CK_FT
#undef CK_FT_ALL
#undef CK_FSET
#undef CK_FN
#undef CK_KERNEL
#undef CK_INST_LEGACY
#undef CK_INST_K
#undef CK_INST_LEGACY_ROWS
#undef CK_INST_K_ROWS
#undef CK_TABLE
#undef CK_NAME
#undef CK_CAT4
#undef CK_CAT4X
#undef CK_SET
#undef CK_KB
#undef CK_KB_ROWS
#undef CK_KTABLE
#undef CK_KTABLE_X
#undef CK_LEG_VEC
#undef CK_LEG_BATCH
#undef CK_LEG_ALL
#undef CK_LEG_ROWS
#undef CK_LEG_SET
#undef CK_Q8B
#undef CK_Q8B_ROWS
#undef CK_Q8TABLE
#undef CK_Q8TABLE_X
