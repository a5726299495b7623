// Scalar reference code: dequantization, reference quantization and fused dot products for every type.
// Formats and quantization algorithms: ggml/src/ggml-common.h and ggml/src/ggml-quants.c
// (dequantize_row_*, quantize_row_*_ref, make_qx_quants, make_q3_quants, make_qkx2_quants).
// Float contraction is off so results match the unfused expressions of the reference, value for value.
#pragma STDC FP_CONTRACT OFF
#include "ck_internal.h"
#include <float.h>
#include <math.h>

#define CK_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CK_MAX(a, b) ((a) > (b) ? (a) : (b))
#define GROUP_MAX_EPS 1e-15f

size_t ck_block_size(int type) {
    switch (type) {
    case CK_F32: case CK_F16: case CK_BF16: return 1;
    case CK_Q4_0: case CK_Q4_1: case CK_Q5_0: case CK_Q5_1: case CK_Q8_0: case CK_Q8_1: return QK;
    case CK_Q2_K: case CK_Q3_K: case CK_Q4_K: case CK_Q5_K: case CK_Q6_K: case CK_Q8_K: return QK_K;
    default: return 0;
    }
}

size_t ck_type_size(int type) {
    switch (type) {
    case CK_F32: return 4;
    case CK_F16: case CK_BF16: return 2;
    case CK_Q4_0: return sizeof(block_q4_0);
    case CK_Q4_1: return sizeof(block_q4_1);
    case CK_Q5_0: return sizeof(block_q5_0);
    case CK_Q5_1: return sizeof(block_q5_1);
    case CK_Q8_0: return sizeof(block_q8_0);
    case CK_Q8_1: return sizeof(block_q8_1);
    case CK_Q2_K: return sizeof(block_q2_K);
    case CK_Q3_K: return sizeof(block_q3_K);
    case CK_Q4_K: return sizeof(block_q4_K);
    case CK_Q5_K: return sizeof(block_q5_K);
    case CK_Q6_K: return sizeof(block_q6_K);
    case CK_Q8_K: return sizeof(block_q8_K);
    default: return 0;
    }
}

int ck_vec_dot_type(int type) {
    switch (type) {
    case CK_F32: return CK_F32;
    case CK_F16: return CK_F16;
    case CK_BF16: return CK_BF16;
    case CK_Q4_0: case CK_Q5_0: case CK_Q8_0: return CK_Q8_0;
    case CK_Q4_1: case CK_Q5_1: return CK_Q8_1;
    case CK_Q2_K: case CK_Q3_K: case CK_Q4_K: case CK_Q5_K: case CK_Q6_K: return CK_Q8_K;
    default: return -1;
    }
}

static int valid_count(int type, size_t n) {
    const size_t bs = ck_block_size(type);
    return bs != 0 && n % bs == 0;
}

// ---------------------------------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------------------------------

int ck_dequantize_ref(int type, const void *src, float *y, size_t n) {
    if (!valid_count(type, n)) return -1;
    switch (type) {
    case CK_F32:
        memcpy(y, src, n * 4);
        return 0;
    case CK_F16: {
        const ck_half *x = src;
        for (size_t i = 0; i < n; i++) y[i] = ck_h2f(x[i]);
        return 0;
    }
    case CK_BF16: {
        const uint16_t *x = src;
        for (size_t i = 0; i < n; i++) y[i] = ck_bf2f(x[i]);
        return 0;
    }
    case CK_Q4_0: {
        const block_q4_0 *x = src;
        for (size_t i = 0; i < n / QK; i++, y += QK) {
            const float d = ck_h2f(x[i].d);
            for (int j = 0; j < QK / 2; j++) {
                const int x0 = (x[i].qs[j] & 0x0F) - 8, x1 = (x[i].qs[j] >> 4) - 8;
                y[j] = x0 * d;
                y[j + QK / 2] = x1 * d;
            }
        }
        return 0;
    }
    case CK_Q4_1: {
        const block_q4_1 *x = src;
        for (size_t i = 0; i < n / QK; i++, y += QK) {
            const float d = ck_h2f(x[i].d), m = ck_h2f(x[i].m);
            for (int j = 0; j < QK / 2; j++) {
                const int x0 = x[i].qs[j] & 0x0F, x1 = x[i].qs[j] >> 4;
                y[j] = x0 * d + m;
                y[j + QK / 2] = x1 * d + m;
            }
        }
        return 0;
    }
    case CK_Q5_0: {
        const block_q5_0 *x = src;
        for (size_t i = 0; i < n / QK; i++, y += QK) {
            const float d = ck_h2f(x[i].d);
            uint32_t qh;
            memcpy(&qh, x[i].qh, 4);
            for (int j = 0; j < QK / 2; j++) {
                const int xh0 = ((qh >> j) << 4) & 0x10, xh1 = (qh >> (j + 12)) & 0x10;
                const int x0 = ((x[i].qs[j] & 0x0F) | xh0) - 16, x1 = ((x[i].qs[j] >> 4) | xh1) - 16;
                y[j] = x0 * d;
                y[j + QK / 2] = x1 * d;
            }
        }
        return 0;
    }
    case CK_Q5_1: {
        const block_q5_1 *x = src;
        for (size_t i = 0; i < n / QK; i++, y += QK) {
            const float d = ck_h2f(x[i].d), m = ck_h2f(x[i].m);
            uint32_t qh;
            memcpy(&qh, x[i].qh, 4);
            for (int j = 0; j < QK / 2; j++) {
                const int xh0 = ((qh >> j) << 4) & 0x10, xh1 = (qh >> (j + 12)) & 0x10;
                const int x0 = (x[i].qs[j] & 0x0F) | xh0, x1 = (x[i].qs[j] >> 4) | xh1;
                y[j] = x0 * d + m;
                y[j + QK / 2] = x1 * d + m;
            }
        }
        return 0;
    }
    case CK_Q8_0: {
        const block_q8_0 *x = src;
        for (size_t i = 0; i < n / QK; i++, y += QK) {
            const float d = ck_h2f(x[i].d);
            for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
        }
        return 0;
    }
    case CK_Q8_1: {
        const block_q8_1 *x = src;
        for (size_t i = 0; i < n / QK; i++, y += QK) {
            const float d = ck_h2f(x[i].d);
            for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
        }
        return 0;
    }
    case CK_Q2_K: {
        const block_q2_K *x = src;
        for (size_t i = 0; i < n / QK_K; i++) {
            const float d = ck_h2f(x[i].d), dmin = ck_h2f(x[i].dmin);
            const uint8_t *q = x[i].qs;
            int is = 0;
            for (int half = 0; half < 2; half++, q += 32) {
                for (int shift = 0; shift < 8; shift += 2) {
                    for (int k = 0; k < 2; k++) {
                        const uint8_t sc = x[i].scales[is++];
                        const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                        for (int l = 0; l < 16; l++) *y++ = dl * ((q[l + 16 * k] >> shift) & 3) - ml;
                    }
                }
            }
        }
        return 0;
    }
    case CK_Q3_K: {
        const block_q3_K *x = src;
        for (size_t i = 0; i < n / QK_K; i++) {
            const float d = ck_h2f(x[i].d);
            int8_t sc[16];
            ck_q3k_scales(x[i].scales, sc);
            const uint8_t *q = x[i].qs;
            int is = 0;
            uint8_t m = 1;
            for (int half = 0; half < 2; half++, q += 32) {
                for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                    for (int k = 0; k < 2; k++) {
                        const float dl = d * sc[is++];
                        for (int l = 0; l < 16; l++) {
                            const int v = ((q[l + 16 * k] >> shift) & 3) - ((x[i].hmask[l + 16 * k] & m) ? 0 : 4);
                            *y++ = dl * v;
                        }
                    }
                }
            }
        }
        return 0;
    }
    case CK_Q4_K: {
        const block_q4_K *x = src;
        for (size_t i = 0; i < n / QK_K; i++) {
            const float d = ck_h2f(x[i].d), dmin = ck_h2f(x[i].dmin);
            const uint8_t *q = x[i].qs;
            for (int j = 0; j < 4; j++, q += 32) {
                uint8_t sc, m;
                ck_scale_min_k4(2 * j, x[i].scales, &sc, &m);
                const float d1 = d * sc, m1 = dmin * m;
                ck_scale_min_k4(2 * j + 1, x[i].scales, &sc, &m);
                const float d2 = d * sc, m2 = dmin * m;
                for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
            }
        }
        return 0;
    }
    case CK_Q5_K: {
        const block_q5_K *x = src;
        for (size_t i = 0; i < n / QK_K; i++) {
            const float d = ck_h2f(x[i].d), dmin = ck_h2f(x[i].dmin);
            const uint8_t *ql = x[i].qs, *qh = x[i].qh;
            uint8_t u1 = 1, u2 = 2;
            for (int j = 0; j < 4; j++, ql += 32, u1 <<= 2, u2 <<= 2) {
                uint8_t sc, m;
                ck_scale_min_k4(2 * j, x[i].scales, &sc, &m);
                const float d1 = d * sc, m1 = dmin * m;
                ck_scale_min_k4(2 * j + 1, x[i].scales, &sc, &m);
                const float d2 = d * sc, m2 = dmin * m;
                for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
            }
        }
        return 0;
    }
    case CK_Q6_K: {
        const block_q6_K *x = src;
        for (size_t i = 0; i < n / QK_K; i++) {
            const float d = ck_h2f(x[i].d);
            const uint8_t *ql = x[i].ql, *qh = x[i].qh;
            const int8_t *sc = x[i].scales;
            for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * sc[is] * q1;
                    y[l + 32] = d * sc[is + 2] * q2;
                    y[l + 64] = d * sc[is + 4] * q3;
                    y[l + 96] = d * sc[is + 6] * q4;
                }
            }
        }
        return 0;
    }
    case CK_Q8_K: {
        const block_q8_K *x = src;
        for (size_t i = 0; i < n / QK_K; i++, y += QK_K) {
            for (int j = 0; j < QK_K; j++) y[j] = x[i].d * x[i].qs[j];
        }
        return 0;
    }
    default:
        return -1;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reference quantization
// ---------------------------------------------------------------------------------------------------------

// make_qx_quants: symmetric levels in [-nmax, nmax-1], optional RMSE search over 19 scales.
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            const int l = ck_nearest_int(iscale * x[i]);
            L[i] = (int8_t)(nmax + CK_MAX(-nmax, CK_MIN(nmax - 1, l)));
        }
        return 1 / iscale;
    }
    int return_early = 0;
    if (rmse_type < 0) { rmse_type = -rmse_type; return_early = 1; }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = ck_nearest_int(iscale * x[i]);
        l = CK_MAX(-nmax, CK_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        const float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = ck_nearest_int(iscale * x[i]);
            l = CK_MAX(-nmax, CK_MIN(nmax - 1, l));
            const float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                const int l = ck_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + CK_MAX(-nmax, CK_MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// make_q3_quants with the RMSE refinement (do_rmse = true), levels returned offset by +nmax.
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = ck_nearest_int(iscale * x[i]);
        l = CK_MAX(-nmax, CK_MIN(nmax - 1, l));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = ck_nearest_int(x[i] * sl2 / slx);
                new_l = CK_MAX(-nmax, CK_MIN(nmax - 1, new_l));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// make_qkx2_quants: asymmetric levels [0, nmax] with a min, weighted search over nstep+1 scales.
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min,
                              uint8_t *Laux, float rmin, float rdelta, int nstep, int use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = ck_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)CK_MAX(0, CK_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = ck_nearest_int(iscale * (x[i] - min));
            l = CK_MAX(0, CK_MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

static void quantize_q4_0(const float *x, block_q4_0 *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ck_f2h(d);
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            const uint8_t xi0 = (uint8_t)CK_MIN(15, (int8_t)(x0 + 8.5f));
            const uint8_t xi1 = (uint8_t)CK_MIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

static void quantize_q4_1(const float *x, block_q4_1 *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ck_f2h(d);
        y[i].m = ck_f2h(min);
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[QK / 2 + j] - min) * id;
            const uint8_t xi0 = (uint8_t)CK_MIN(15, (int8_t)(x0 + 0.5f));
            const uint8_t xi1 = (uint8_t)CK_MIN(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

static void quantize_q5_0(const float *x, block_q5_0 *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ck_f2h(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            const uint8_t xi0 = (uint8_t)CK_MIN(31, (int8_t)(x0 + 16.5f));
            const uint8_t xi1 = (uint8_t)CK_MIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << j;
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quantize_q5_1(const float *x, block_q5_1 *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ck_f2h(d);
        y[i].m = ck_f2h(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[QK / 2 + j] - min) * id;
            const uint8_t xi0 = (uint8_t)(x0 + 0.5f), xi1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << j;
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quantize_q8_0(const float *x, block_q8_0 *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = CK_MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ck_f2h(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quantize_q8_1(const float *x, block_q8_1 *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = CK_MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ck_f2h(d);
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = ck_f2h(sum * d);
    }
}

static void quantize_q8_K(const float *x, block_q8_K *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = ck_nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)CK_MIN(127, v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

static void quantize_q2_K(const float *x, block_q2_K *y, size_t nb) {
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    const float q4scale = 15.f;
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = (uint8_t)ck_nearest_int(iscale * scales[j]);
            y[i].d = ck_f2h(max_scale / q4scale);
        } else {
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
            y[i].d = ck_f2h(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; ++j) {
                const int l = ck_nearest_int(iscale * mins[j]);
                y[i].scales[j] |= (uint8_t)(l << 4);
            }
            y[i].dmin = ck_f2h(max_min / q4scale);
        } else {
            y[i].dmin = ck_f2h(0.f);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = ck_h2f(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = ck_h2f(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = ck_nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)CK_MAX(0, CK_MIN(3, l));
            }
        }
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
            }
        }
    }
}

static void quantize_q3_K(const float *x, block_q3_K *y, size_t nb) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            const float scale = fabsf(scales[j]);
            if (scale > amax) { amax = scale; max_scale = scales[j]; }
        }
        memset(y[i].scales, 0, 12);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                int8_t l = (int8_t)ck_nearest_int(iscale * scales[j]);
                l = (int8_t)(CK_MAX(-32, CK_MIN(31, l)) + 32);
                if (j < 8) y[i].scales[j] = l & 0xF;
                else y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[i].d = ck_f2h(1 / iscale);
        } else {
            y[i].d = ck_f2h(0.f);
        }
        int8_t sc[16];
        ck_q3k_scales(y[i].scales, sc);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = ck_h2f(y[i].d) * sc[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = ck_nearest_int(x[16 * j + ii] / d);
                l = CK_MAX(-4, CK_MIN(3, l));
                L[16 * j + ii] = (int8_t)(l + 4);
            }
        }
        memset(y[i].hmask, 0, QK_K / 8);
        int m = 0;
        uint8_t hm = 1;
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == QK_K / 8) { m = 0; hm <<= 1; }
        }
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
            }
        }
    }
}

// Shared by q4_K (nmax 15) and q5_K (nmax 31): per-32 scales/mins via make_qkx2_quants, 6-bit packed.
static void quantize_k4_scales(const float *x, int nmax, float rmin, float rdelta, int nstep, uint8_t *L,
                               uint8_t scales12[12], ck_half *dd, ck_half *dmin) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)ck_nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)ck_nearest_int(inv_min * mins[j]);
        ls = CK_MIN(63, ls);
        lm = CK_MIN(63, lm);
        if (j < 4) {
            scales12[j] = ls;
            scales12[j + 4] = lm;
        } else {
            scales12[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scales12[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales12[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *dd = ck_f2h(max_scale / 63.f);
    *dmin = ck_f2h(max_min / 63.f);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        ck_scale_min_k4(j, scales12, &sc, &m);
        const float d = ck_h2f(*dd) * sc;
        if (!d) continue;
        const float dm = ck_h2f(*dmin) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = ck_nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)CK_MAX(0, CK_MIN(nmax, l));
        }
    }
}

static void quantize_q4_K(const float *x, block_q4_K *y, size_t nb) {
    uint8_t L[QK_K];
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        memset(y[i].scales, 0, 12);
        quantize_k4_scales(x, 15, -1.f, 0.1f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32) {
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        }
    }
}

static void quantize_q5_K(const float *x, block_q5_K *y, size_t nb) {
    uint8_t L[QK_K];
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        memset(y[i].scales, 0, 12);
        quantize_k4_scales(x, 31, -0.5f, 0.1f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *qh = y[i].qh, *ql = y[i].qs;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64, m1 <<= 2, m2 <<= 2, ql += 32) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n + j], l2 = L[n + j + 32];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
        }
    }
}

static void quantize_q6_K(const float *x, block_q6_K *y, size_t nb) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (size_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, NULL);
            scales[ib] = scale;
            if (fabsf(scale) > max_abs_scale) { max_abs_scale = fabsf(scale); max_scale = scale; }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = ck_f2h(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = (int8_t)CK_MIN(127, ck_nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = ck_h2f(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = ck_nearest_int(x[16 * j + ii] / d);
                l = CK_MAX(-32, CK_MIN(31, l));
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

int ck_quantize_ref(int type, const float *x, void *dst, size_t n) {
    if (!valid_count(type, n)) return -1;
    const size_t nb = n / ck_block_size(type);
    switch (type) {
    case CK_F32: memcpy(dst, x, n * 4); return 0;
    case CK_F16: { ck_half *y = dst; for (size_t i = 0; i < n; i++) y[i] = ck_f2h(x[i]); return 0; }
    case CK_BF16: { uint16_t *y = dst; for (size_t i = 0; i < n; i++) y[i] = ck_f2bf(x[i]); return 0; }
    case CK_Q4_0: quantize_q4_0(x, dst, nb); return 0;
    case CK_Q4_1: quantize_q4_1(x, dst, nb); return 0;
    case CK_Q5_0: quantize_q5_0(x, dst, nb); return 0;
    case CK_Q5_1: quantize_q5_1(x, dst, nb); return 0;
    case CK_Q8_0: quantize_q8_0(x, dst, nb); return 0;
    case CK_Q8_1: quantize_q8_1(x, dst, nb); return 0;
    case CK_Q2_K: quantize_q2_K(x, dst, nb); return 0;
    case CK_Q3_K: quantize_q3_K(x, dst, nb); return 0;
    case CK_Q4_K: quantize_q4_K(x, dst, nb); return 0;
    case CK_Q5_K: quantize_q5_K(x, dst, nb); return 0;
    case CK_Q6_K: quantize_q6_K(x, dst, nb); return 0;
    case CK_Q8_K: quantize_q8_K(x, dst, nb); return 0;
    default: return -1;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reference fused dot products: exact integer sums per (sub-)block, then float accumulation in block order.
// ---------------------------------------------------------------------------------------------------------

float ck_vec_dot_ref(int type, size_t n, const void *vw, const void *vx) {
    if (ck_vec_dot_type(type) < 0 || !valid_count(type, n)) return NAN;
    float sum = 0;
    switch (type) {
    case CK_F32: {
        const float *w = vw, *x = vx;
        for (size_t i = 0; i < n; i++) sum += w[i] * x[i];
        return sum;
    }
    case CK_F16: {
        const ck_half *w = vw, *x = vx;
        for (size_t i = 0; i < n; i++) sum += ck_h2f(w[i]) * ck_h2f(x[i]);
        return sum;
    }
    case CK_BF16: {
        const uint16_t *w = vw, *x = vx;
        for (size_t i = 0; i < n; i++) sum += ck_bf2f(w[i]) * ck_bf2f(x[i]);
        return sum;
    }
    case CK_Q4_0: {
        const block_q4_0 *w = vw; const block_q8_0 *x = vx;
        for (size_t i = 0; i < n / QK; i++) {
            int s = 0;
            for (int j = 0; j < QK / 2; j++) {
                s += ((w[i].qs[j] & 0xF) - 8) * x[i].qs[j] + ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + 16];
            }
            sum += (float)s * (ck_h2f(w[i].d) * ck_h2f(x[i].d));
        }
        return sum;
    }
    case CK_Q4_1: {
        const block_q4_1 *w = vw; const block_q8_1 *x = vx;
        for (size_t i = 0; i < n / QK; i++) {
            int s = 0;
            for (int j = 0; j < QK / 2; j++) s += (w[i].qs[j] & 0xF) * x[i].qs[j] + (w[i].qs[j] >> 4) * x[i].qs[j + 16];
            sum += (float)s * (ck_h2f(w[i].d) * ck_h2f(x[i].d)) + ck_h2f(w[i].m) * ck_h2f(x[i].s);
        }
        return sum;
    }
    case CK_Q5_0: {
        const block_q5_0 *w = vw; const block_q8_0 *x = vx;
        for (size_t i = 0; i < n / QK; i++) {
            uint32_t qh;
            memcpy(&qh, w[i].qh, 4);
            int s = 0;
            for (int j = 0; j < QK / 2; j++) {
                const int x0 = ((w[i].qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)) - 16;
                const int x1 = ((w[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
                s += x0 * x[i].qs[j] + x1 * x[i].qs[j + 16];
            }
            sum += (float)s * (ck_h2f(w[i].d) * ck_h2f(x[i].d));
        }
        return sum;
    }
    case CK_Q5_1: {
        const block_q5_1 *w = vw; const block_q8_1 *x = vx;
        for (size_t i = 0; i < n / QK; i++) {
            uint32_t qh;
            memcpy(&qh, w[i].qh, 4);
            int s = 0;
            for (int j = 0; j < QK / 2; j++) {
                const int x0 = (w[i].qs[j] & 0xF) | (((qh >> j) << 4) & 0x10);
                const int x1 = (w[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
                s += x0 * x[i].qs[j] + x1 * x[i].qs[j + 16];
            }
            sum += (float)s * (ck_h2f(w[i].d) * ck_h2f(x[i].d)) + ck_h2f(w[i].m) * ck_h2f(x[i].s);
        }
        return sum;
    }
    case CK_Q8_0: {
        const block_q8_0 *w = vw; const block_q8_0 *x = vx;
        for (size_t i = 0; i < n / QK; i++) {
            int s = 0;
            for (int j = 0; j < QK; j++) s += w[i].qs[j] * x[i].qs[j];
            sum += (float)s * (ck_h2f(w[i].d) * ck_h2f(x[i].d));
        }
        return sum;
    }
    case CK_Q2_K: {
        const block_q2_K *w = vw; const block_q8_K *x = vx;
        for (size_t i = 0; i < n / QK_K; i++) {
            int isum = 0, summs = 0;
            for (int g = 0; g < 16; g++) summs += (w[i].scales[g] >> 4) * x[i].bsums[g];
            // element e: half = e/128, shift = ((e%128)/32)*2, byte = half*32 + e%32; group = e/16
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int l = 0; l < 16; l++) {
                    const int e = 16 * g + l;
                    const int q = (w[i].qs[(e / 128) * 32 + e % 32] >> (((e % 128) / 32) * 2)) & 3;
                    s += q * x[i].qs[e];
                }
                isum += (w[i].scales[g] & 0xF) * s;
            }
            sum += x[i].d * ck_h2f(w[i].d) * (float)isum - x[i].d * ck_h2f(w[i].dmin) * (float)summs;
        }
        return sum;
    }
    case CK_Q3_K: {
        const block_q3_K *w = vw; const block_q8_K *x = vx;
        for (size_t i = 0; i < n / QK_K; i++) {
            int8_t sc[16];
            ck_q3k_scales(w[i].scales, sc);
            int isum = 0;
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int l = 0; l < 16; l++) {
                    const int e = 16 * g + l;
                    const int lo = (w[i].qs[(e / 128) * 32 + e % 32] >> (((e % 128) / 32) * 2)) & 3;
                    const int hi = (w[i].hmask[e % 32] >> (e / 32)) & 1;
                    s += (lo - (hi ? 0 : 4)) * x[i].qs[e];
                }
                isum += sc[g] * s;
            }
            sum += x[i].d * ck_h2f(w[i].d) * (float)isum;
        }
        return sum;
    }
    case CK_Q4_K: {
        const block_q4_K *w = vw; const block_q8_K *x = vx;
        for (size_t i = 0; i < n / QK_K; i++) {
            int isum = 0, summs = 0;
            for (int sb = 0; sb < 8; sb++) {
                uint8_t sc, m;
                ck_scale_min_k4(sb, w[i].scales, &sc, &m);
                int s = 0;
                for (int l = 0; l < 32; l++) {
                    const uint8_t b = w[i].qs[(sb / 2) * 32 + l];
                    s += ((sb & 1) ? (b >> 4) : (b & 0xF)) * x[i].qs[32 * sb + l];
                }
                isum += sc * s;
                summs += m * (x[i].bsums[2 * sb] + x[i].bsums[2 * sb + 1]);
            }
            sum += x[i].d * ck_h2f(w[i].d) * (float)isum - x[i].d * ck_h2f(w[i].dmin) * (float)summs;
        }
        return sum;
    }
    case CK_Q5_K: {
        const block_q5_K *w = vw; const block_q8_K *x = vx;
        for (size_t i = 0; i < n / QK_K; i++) {
            int isum = 0, summs = 0;
            for (int sb = 0; sb < 8; sb++) {
                uint8_t sc, m;
                ck_scale_min_k4(sb, w[i].scales, &sc, &m);
                int s = 0;
                for (int l = 0; l < 32; l++) {
                    const uint8_t b = w[i].qs[(sb / 2) * 32 + l];
                    const int q = ((sb & 1) ? (b >> 4) : (b & 0xF)) | (((w[i].qh[l] >> sb) & 1) << 4);
                    s += q * x[i].qs[32 * sb + l];
                }
                isum += sc * s;
                summs += m * (x[i].bsums[2 * sb] + x[i].bsums[2 * sb + 1]);
            }
            sum += x[i].d * ck_h2f(w[i].d) * (float)isum - x[i].d * ck_h2f(w[i].dmin) * (float)summs;
        }
        return sum;
    }
    case CK_Q6_K: {
        const block_q6_K *w = vw; const block_q8_K *x = vx;
        for (size_t i = 0; i < n / QK_K; i++) {
            int isum = 0;
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int l = 0; l < 16; l++) {
                    const int e = 16 * g + l;
                    const int half = e / 128, r = e % 128, quarter = r / 32, k = r % 32;
                    const uint8_t qlb = w[i].ql[half * 64 + (quarter & 1) * 32 + k];
                    const int lo = (quarter >= 2) ? (qlb >> 4) : (qlb & 0xF);
                    const int hi = (w[i].qh[half * 32 + k] >> (2 * quarter)) & 3;
                    s += ((lo | (hi << 4)) - 32) * x[i].qs[e];
                }
                isum += w[i].scales[g] * s;
            }
            sum += x[i].d * ck_h2f(w[i].d) * (float)isum;
        }
        return sum;
    }
    default:
        return NAN;
    }
}
