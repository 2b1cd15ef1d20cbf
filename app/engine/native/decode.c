/* Softserve's native single-row decode step (x86-64 with AVX-512 BW/VL/VNNI), built and loaded
 * by app/engine/native/__init__.py. One call runs one token through every layer of a Llama-family
 * model with per-output-channel int8 weights, and writes its float32 logits.
 *
 * Why: at batch 1 the step is ~120 small matrix-vector products plus ~1,000 tiny tensor operations;
 * each operation costs torch a few microseconds of dispatch, together a quarter of the step. Here
 * they are plain loops inside one OpenMP parallel region (the OpenMP runtime torch already runs, so
 * no second thread pool), and the products use VNNI: the input is quantized to int8 in blocks of 32
 * (one scale per block, as llama.cpp's Q8_0 activations), 64 int8 products per instruction.
 *
 * Numerics follow the lean forward in bfloat16: the residual stream, norms' outputs, projections'
 * outputs, rotary results and the KV cache are rounded to bfloat16 where torch's ops round them;
 * sums, softmax and attention run in float32.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLK 64 /* int8 per register */
#define QB 32  /* values per activation scale */
#define MAX_HEAD_DIM 256

typedef struct {
    const int8_t* weight;   /* [out, in] */
    const uint16_t* scale;  /* [out] bfloat16: w ~= weight * scale */
    const uint16_t* bias;   /* [out] bfloat16 or NULL */
    int64_t out, in;
} Q8;

typedef struct {
    const uint16_t* attn_norm; /* [D] */
    Q8 qkv, o;
    const uint16_t* mlp_norm;  /* [D] */
    Q8 gate_up, down;
} Layer;

typedef struct {
    const Layer* layers;
    int64_t num_layers, dim, heads, kv_heads, head_dim, inter;
    const uint16_t* norm; /* [D] */
    Q8 lm_head;
    double eps;
} Model;

static inline float bf2f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) {  /* round to nearest even, as torch */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline float bfr(float f) { return bf2f(f2bf(f)); }

/* x [k] float -> |x| as int8 with one scale per block of 32 (as llama.cpp's Q8_0), and a mask of
 * the negatives per 64 (one AVX-512 register of int8). */
static void quantize(const float* x, int64_t k, int8_t* xa, uint64_t* neg, float* dx) {
    for (int64_t b = 0; b < k / BLK; b++) {
        const float* v = x + b * BLK;
        uint64_t mask = 0;
        for (int half = 0; half < 2; half++) {
            const float* h = v + half * QB;
            const __m512 f0 = _mm512_loadu_ps(h), f1 = _mm512_loadu_ps(h + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(f0), _mm512_abs_ps(f1)));
            const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
            const __m512 fs[2] = {f0, f1};
            for (int i = 0; i < 2; i++) {
                const int at = half * QB + i * 16;
                mask |= (uint64_t)_mm512_cmp_ps_mask(fs[i], _mm512_setzero_ps(), _CMP_LT_OQ) << at;
                const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_abs_ps(fs[i]), inv));
                _mm_storeu_si128((__m128i*)(xa + b * BLK + at), _mm512_cvtusepi32_epi8(q));
            }
            /* the scale of each int32 lane: lanes 0-7 sum bytes 0-31, lanes 8-15 bytes 32-63 */
            for (int i = 0; i < 8; i++) dx[16 * b + 8 * half + i] = amax / 127.f;
        }
        neg[b] = mask;
    }
}

/* y[r] = bf16(sum_k x[k] w[r,k] * scale[r] + bias[r]) for the rows this thread takes (omp for). */
static void gemv(const Q8* q, const int8_t* xa, const uint64_t* neg, const float* dx, float* y) {
    const int64_t n = q->out, k = q->in, nb = k / BLK;
    const __m512i zero = _mm512_setzero_si512();
    #pragma omp for schedule(static)
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
        const int64_t rows = n - r0 < 4 ? n - r0 : 4;
        const int8_t* w0 = q->weight + r0 * k;
        const int8_t* w1 = rows > 1 ? w0 + k : w0;
        const int8_t* w2 = rows > 2 ? w0 + 2 * k : w0;
        const int8_t* w3 = rows > 3 ? w0 + 3 * k : w0;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t b = 0; b < nb; b++) {
            const __mmask64 ng = neg[b];
            const __m512i xv = _mm512_loadu_si512((const void*)(xa + b * BLK));
            const __m512 d = _mm512_loadu_ps(dx + 16 * b);
            __m512i v0 = _mm512_loadu_si512((const void*)(w0 + b * BLK));
            __m512i v1 = _mm512_loadu_si512((const void*)(w1 + b * BLK));
            __m512i v2 = _mm512_loadu_si512((const void*)(w2 + b * BLK));
            __m512i v3 = _mm512_loadu_si512((const void*)(w3 + b * BLK));
            v0 = _mm512_mask_sub_epi8(v0, ng, zero, v0);
            v1 = _mm512_mask_sub_epi8(v1, ng, zero, v1);
            v2 = _mm512_mask_sub_epi8(v2, ng, zero, v2);
            v3 = _mm512_mask_sub_epi8(v3, ng, zero, v3);
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xv, v0)), d, a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xv, v1)), d, a1);
            a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xv, v2)), d, a2);
            a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xv, v3)), d, a3);
        }
        const float sums[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1),
                               _mm512_reduce_add_ps(a2), _mm512_reduce_add_ps(a3)};
        for (int64_t j = 0; j < rows; j++) {
            /* as torch: the product rounded to bfloat16, then the bias added and rounded */
            float v = bfr(sums[j] * bf2f(q->scale[r0 + j]));
            y[r0 + j] = q->bias ? bfr(v + bf2f(q->bias[r0 + j])) : v;
        }
    }
}

/* As the lean forward's rms_norm: normalise in float32, round, then scale by the weight, round. */
static void rms_norm(const float* x, const uint16_t* w, int64_t d, double eps, float* out) {
    double ss = 0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * x[i];
    const float r = 1.0f / sqrtf((float)(ss / d) + (float)eps);
    for (int64_t i = 0; i < d; i++) out[i] = bfr(bf2f(w[i]) * bfr(x[i] * r));
}

static inline __m512 load_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

/* One K/V head's group of query heads over columns 0..cols-1 of its cache: out [G, hd]. */
static void attend(const float* q, int64_t group, int64_t hd, const uint16_t* k, const uint16_t* v,
                   int64_t cols, float* scores, float* out) {
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t g = 0; g < group; g++) {
        const float* qg = q + g * hd;
        float* s = scores + g * cols;
        float mx = -INFINITY;
        for (int64_t c = 0; c < cols; c++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t i = 0; i < hd; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i), load_bf16(k + c * hd + i), acc);
            s[c] = _mm512_reduce_add_ps(acc) * scale;
            if (s[c] > mx) mx = s[c];
        }
        float total = 0;
        for (int64_t c = 0; c < cols; c++) { s[c] = expf(s[c] - mx); total += s[c]; }
        __m512 o[MAX_HEAD_DIM / 16];
        for (int64_t i = 0; i < hd / 16; i++) o[i] = _mm512_setzero_ps();
        for (int64_t c = 0; c < cols; c++) {
            const __m512 p = _mm512_set1_ps(s[c] / total);
            for (int64_t i = 0; i < hd / 16; i++) o[i] = _mm512_fmadd_ps(p, load_bf16(v + c * hd + i * 16), o[i]);
        }
        for (int64_t i = 0; i < hd / 16; i++) _mm512_storeu_ps(out + g * hd + i * 16, o[i]);
    }
}

/* Rotary embedding of one head in place, as the lean forward: x*cos + rotate_half(x)*sin. */
static void rope(float* x, const uint16_t* cos, const uint16_t* sin, int64_t hd) {
    float t[MAX_HEAD_DIM];
    const int64_t half = hd / 2;
    for (int64_t i = 0; i < hd; i++) {
        const float rot = i < half ? -x[i + half] : x[i - half];
        t[i] = bfr(bfr(x[i] * bf2f(cos[i])) + bfr(rot * bf2f(sin[i])));
    }
    memcpy(x, t, hd * sizeof(float));
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

/* The token whose embedding is `embed` [D] at position `pos`: its K/V written into column `pos`
 * of the slot (k_cache/v_cache point at layer 0, this slot, head 0, column 0; layer_stride and
 * head_stride in elements, columns of head_dim contiguous), attention over columns 0..pos, and
 * logits [V] float32. Returns 0, -1 where the shapes are outside what this code handles, -2 where
 * memory for the attention scores ran out. */
int softserve_decode(const Model* m, const uint16_t* embed, const uint16_t* cos, const uint16_t* sin,
                     uint16_t* k_cache, uint16_t* v_cache, int64_t layer_stride, int64_t head_stride,
                     int64_t pos, float* logits) {
    const int64_t d = m->dim, hq = m->heads, hkv = m->kv_heads, hd = m->head_dim, inter = m->inter;
    const int64_t group = hq / hkv, cols = pos + 1, width = (hq + 2 * hkv) * hd;
    const int64_t widest = d > inter ? d : inter;
    if (d % BLK || inter % BLK || (hq * hd) % BLK || hd % 16 || hd > MAX_HEAD_DIM || hq % hkv) return -1;
    float x[d], h[d], qkv[width], att[hq * hd], gu[2 * inter], act[inter];
    int8_t xa[widest] __attribute__((aligned(64)));
    uint64_t neg[widest / BLK];
    float dx[widest / BLK * 16];
    float* scores = malloc(sizeof(float) * hq * cols); /* the heap: it grows with the context */
    if (!scores) return -2;
    for (int64_t i = 0; i < d; i++) x[i] = bf2f(embed[i]);
    #pragma omp parallel
    {
        for (int64_t l = 0; l < m->num_layers; l++) {
            const Layer* L = m->layers + l;
            uint16_t* kl = k_cache + l * layer_stride;
            uint16_t* vl = v_cache + l * layer_stride;
            #pragma omp single
            {
                rms_norm(x, L->attn_norm, d, m->eps, h);
                quantize(h, d, xa, neg, dx);
            }
            gemv(&L->qkv, xa, neg, dx, qkv);
            #pragma omp single
            {
                for (int64_t j = 0; j < hq + hkv; j++) rope(qkv + j * hd, cos, sin, hd);
                for (int64_t j = 0; j < hkv; j++) {
                    const float* kj = qkv + (hq + j) * hd;
                    const float* vj = qkv + (hq + hkv + j) * hd;
                    for (int64_t i = 0; i < hd; i++) {
                        kl[j * head_stride + pos * hd + i] = f2bf(kj[i]);
                        vl[j * head_stride + pos * hd + i] = f2bf(vj[i]);
                    }
                }
            }
            #pragma omp for schedule(static)
            for (int64_t j = 0; j < hkv; j++)
                attend(qkv + j * group * hd, group, hd, kl + j * head_stride, vl + j * head_stride, cols,
                       scores + j * group * cols, att + j * group * hd);
            #pragma omp single
            {
                for (int64_t i = 0; i < hq * hd; i++) att[i] = bfr(att[i]);
                quantize(att, hq * hd, xa, neg, dx);
            }
            gemv(&L->o, xa, neg, dx, h);
            #pragma omp single
            {
                for (int64_t i = 0; i < d; i++) x[i] = bfr(x[i] + h[i]);
                rms_norm(x, L->mlp_norm, d, m->eps, h);
                quantize(h, d, xa, neg, dx);
            }
            gemv(&L->gate_up, xa, neg, dx, gu);
            #pragma omp single
            {
                for (int64_t i = 0; i < inter; i++) act[i] = bfr(bfr(silu(gu[i])) * gu[inter + i]);
                quantize(act, inter, xa, neg, dx);
            }
            gemv(&L->down, xa, neg, dx, h);
            #pragma omp single
            for (int64_t i = 0; i < d; i++) x[i] = bfr(x[i] + h[i]);
        }
        #pragma omp single
        {
            rms_norm(x, m->norm, d, m->eps, h);
            quantize(h, d, xa, neg, dx);
        }
        gemv(&m->lm_head, xa, neg, dx, logits);
    }
    free(scores);
    return 0;
}
