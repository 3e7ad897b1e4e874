/* Fused CPU kernels for drawnet.fast (float32), loaded through ctypes by drawnet/kernels.py.
 *
 * Each function does in one pass over memory what drawnet.fast otherwise does in 10-40 small
 * PyTorch operations per step: the elementwise LSTM work (eqs 5 and 7 after their matrix
 * products) and the whole attention of one step (eqs 19-29: filterbanks, glimpse or write
 * patch, and their gradients). The equations and the layout of every buffer are those of the
 * PyTorch code in drawnet/fast.py, which stays the reference for them (tests/test_kernels.py
 * checks each kernel against it).
 *
 * Conventions: row-major float32; ``ld*`` arguments are row strides in elements, so that rows of a
 * larger buffer (a column block of the fused products) can be passed without copying; ``nt`` is
 * the number of OpenMP threads (torch's libgomp is the one loaded in the process). Loops over the
 * batch are split across threads; images never interact.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NORMALISER_EPS 1e-8f /* drawnet.attention.NORMALISER_EPS */

/* Every kernel runs with denormal floats flushed to zero (FTZ and DAZ, in each thread, restored on
 * exit). Filter values far from their centre reach 1e-38 and below, and arithmetic on denormals
 * is about a hundred times slower on x86; flushing changes nothing above 1.2e-38, far below the
 * float32 rounding of the sums they enter. */
#if defined(__SSE__)
#include <xmmintrin.h>
static inline unsigned flush_denormals(void)
{
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ (bit 15) and DAZ (bit 6) */
    return csr;
}
static inline void restore_denormals(unsigned csr) { _mm_setcsr(csr); }
#else
static inline unsigned flush_denormals(void) { return 0; }
static inline void restore_denormals(unsigned csr) { (void)csr; }
#endif

/* exp, sigmoid and tanh for float32, written out so that the compiler vectorises them at the full
 * width of the CPU (glibc's expf/tanhf are scalar calls here): exp(x) = 2^k exp(r) with
 * r = x - k ln 2 in [-ln2/2, ln2/2] and a degree-6 polynomial for exp(r) (the Cephes expf
 * coefficients); relative error about 2e-7, as float32 rounding. NaN stays NaN (the clamps are
 * comparisons that are false for NaN), so a diverging run is still caught by the trainer. */
static inline float exp_f(float x)
{
    float xc = x > 88.0f ? 88.0f : x;
    xc = xc < -87.0f ? -87.0f : xc;
    /* k = round(x / ln 2): rintf is one vector instruction here (roundf is a library call that
     * stops vectorisation, and the 1.5 * 2^23 trick is undone by -fassociative-math) */
    float k = __builtin_rintf(xc * 1.44269504088896341f);
    int ki = (int)k;
    float r = xc - k * 0.693359375f + k * 2.12194440e-4f; /* ln 2 in two parts: exact products */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int i; } scale;
    scale.i = (ki + 127) << 23; /* 2^k, k in [-126, 127] after the clamps */
    /* Below e^-87 the result is 0, as expf rounds it at the bottom of the float range: a tiny
     * normal value here would turn into denormals in the products that follow (a filter value
     * far from its centre times a gradient), and those are a hundred times slower on x86. */
    return x < -87.0f ? 0.0f : p * scale.f;
}

static inline float sigm(float x) { return 1.0f / (1.0f + exp_f(-x)); }

/* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no cancellation for large |x|, and for
 * small |x| the absolute error stays at float32 rounding (about 6e-8). */
static inline float tanh_f(float x)
{
    float e = exp_f(-2.0f * __builtin_fabsf(x));
    float t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : t;
}

int drawnet_kernels_version(void) { return 3; }

/* ------------------------------------------------------------------------------ LSTM (5), (7)
 * Gate order i, f, g, o (torch.nn.LSTMCell): c' = f c + i g, h' = o tanh(c'). ``gates`` holds
 * the pre-activations and is overwritten with the activations (the backward needs them). c_out
 * may be c_prev. */
void lstm_forward(int nt, int B, int H, float *gates, long ldg, const float *c_prev, long ldcp, float *c_out,
                  long ldc, float *h_out, long ldh)
{
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            float *g = gates + b * ldg;
            const float *cp = c_prev + b * ldcp;
            float *c = c_out + b * ldc, *h = h_out + b * ldh;
#pragma omp simd
            for (int j = 0; j < H; j++) {
                float i = sigm(g[j]), f = sigm(g[H + j]), gg = tanh_f(g[2 * H + j]), o = sigm(g[3 * H + j]);
                g[j] = i;
                g[H + j] = f;
                g[2 * H + j] = gg;
                g[3 * H + j] = o;
                float cc = f * cp[j] + i * gg;
                c[j] = cc;
                h[j] = o * tanh_f(cc);
            }
        }
        restore_denormals(csr);
    }
}

/* Gradients of one LSTM step. dh (+ dh2 when not NULL) reaches h', dc reaches c' and is replaced
 * by the gradient reaching c_prev; the pre-activation gate gradients go to dgates. */
void lstm_backward(int nt, int B, int H, const float *dh, long lddh, const float *dh2, long lddh2, float *dc,
                   long lddc, const float *act, long lda, const float *c_prev, long ldcp, const float *c, long ldc,
                   float *dgates, long lddg)
{
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            const float *a = act + b * lda, *cp = c_prev + b * ldcp, *cc = c + b * ldc, *d1 = dh + b * lddh;
            const float *d2 = dh2 ? dh2 + b * lddh2 : d1;
            float scale2 = dh2 ? 1.0f : 0.0f;
            float *dcb = dc + b * lddc, *dg = dgates + b * lddg;
#pragma omp simd
            for (int j = 0; j < H; j++) {
                float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
                float d = d1[j] + scale2 * d2[j];
                float tc = tanh_f(cc[j]);
                float dcj = dcb[j] + d * o * (1.0f - tc * tc); /* through h' = o tanh(c') */
                dg[j] = dcj * g * i * (1.0f - i);
                dg[H + j] = dcj * cp[j] * f * (1.0f - f);
                dg[2 * H + j] = dcj * i * (1.0f - g * g);
                dg[3 * H + j] = d * tc * o * (1.0f - o);
                dcb[j] = dcj * f;
            }
        }
        restore_denormals(csr);
    }
}

/* (3) without read attention: out (the x^_t half of eq. 17) = x - sigmoid(c_{t-1}). */
void error_image(int nt, int B, int pixels, const float *x, const float *canvas, float *out, long ldo)
{
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            const float *xb = x + (long)b * pixels, *cb = canvas + (long)b * pixels;
            float *o = out + b * ldo;
#pragma omp simd
            for (int k = 0; k < pixels; k++)
                o[k] = xb[k] - sigm(cb[k]);
        }
        restore_denormals(csr);
    }
}

/* Backward of (3): d_canvas += d_x_hat * d(x^)/d(c) = -d_x_hat sigma'(c), with sigma(c) = x - x^. */
void error_image_backward(int nt, int B, int pixels, const float *x, const float *x_hat, long ldxh,
                          const float *d_x_hat, long lddx, float *d_canvas)
{
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            const float *xb = x + (long)b * pixels, *xh = x_hat + b * ldxh, *dx = d_x_hat + b * lddx;
            float *dc = d_canvas + (long)b * pixels;
#pragma omp simd
            for (int k = 0; k < pixels; k++) {
                float s = xb[k] - xh[k];
                dc[k] += dx[k] * (s - 1.0f) * s;
            }
        }
        restore_denormals(csr);
    }
}

/* ------------------------------------------------------------------------------ attention
 * The attention kernels work on blocks of L = 16 images with the image index innermost
 * ("blocked" layout: a (batch, K) matrix becomes (batch / L, K, L), the batch padded with zeros
 * to a multiple of L). Every per-image quantity (a filter value, a glimpse entry, a pixel) then
 * sits in one 16-lane vector for 16 images, and every loop of the equations is a plain vector
 * operation with no sums across lanes; with one image per row, the loops are 28 long and their
 * set-up costs more than their work. The canvas, x and x^ are kept blocked throughout the
 * recurrence (to_blocked / from_blocked convert at the ends); the products with the fused weights
 * stay row-major, and the kernels gather their inputs from those rows and scatter their outputs.
 *
 * One attention layer (read or write), for images of C channels, height Ht, width Wd, and an
 * N x N grid, keeps per block (P = max(Wd, Ht)):
 *   F   (2, N, P, L): F_X in rows 0..N-1 (pixels 0..Wd-1), F_Y in rows N..2N-1 (pixels 0..Ht-1);
 *   Zn  (2, N, L):    the normalisers of eqs (25)-(26) before their floor;
 *   mu  (2, N, L):    the filter centres of eqs (19)-(20);
 *   sc  (3, L):       sigma^2, delta, gamma.
 * ``raw`` is the 5-vector of eq. (21) per image: g~_X, g~_Y, log sigma^2, log delta~, log gamma. */
#define L 16
#define LANES _Pragma("omp simd") for (int l = 0; l < L; l++)

/* A tile of the blocked layout is kn x L values t[k * L + l] (k < kn <= 16); its transpose is L
 * rows of kn values, row l at rows + l * ld, for the rows l < nl (the rest are past the batch).
 * With AVX-512, 16 x 16 values are transposed in registers (4 rounds of shuffles); otherwise, and
 * for the compiler that does not target it, element by element. */
#if defined(__AVX512F__)
#include <immintrin.h>
/* r[k] holds row k of a 16 x 16 tile; afterwards r[l] holds column l. */
static inline void transpose16(__m512 r[16])
{
    __m512 t[16], u[16], v[16];
    for (int i = 0; i < 16; i += 2) { /* 32-bit interleave of row pairs */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + e], 128-bit lane j: column 4j + e of rows 4g .. 4g + 3 */
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* a 4 x 4 transpose of 128-bit lanes for each e: column 4j + e gathers lane j of u[e], u[4 + e],
     * u[8 + e], u[12 + e] */
    for (int e = 0; e < 4; e++) {
        v[0] = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44);
        v[1] = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
        v[2] = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44);
        v[3] = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
        r[e] = _mm512_shuffle_f32x4(v[0], v[2], 0x88);
        r[4 + e] = _mm512_shuffle_f32x4(v[0], v[2], 0xDD);
        r[8 + e] = _mm512_shuffle_f32x4(v[1], v[3], 0x88);
        r[12 + e] = _mm512_shuffle_f32x4(v[1], v[3], 0xDD);
    }
}
#endif

static void tile_to_rows(const float *t, int kn, float *rows, long ld, int nl)
{
#if defined(__AVX512F__) && L == 16
    __m512 r[16];
    for (int k = 0; k < 16; k++)
        r[k] = k < kn ? _mm512_loadu_ps(t + k * L) : _mm512_setzero_ps();
    transpose16(r);
    __mmask16 m = (__mmask16)((1u << kn) - 1u);
    for (int l = 0; l < nl; l++)
        _mm512_mask_storeu_ps(rows + l * ld, m, r[l]);
#else
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < kn; k++)
            rows[l * ld + k] = t[k * L + l];
#endif
}

/* The inverse: L rows of kn values (rows l >= nl read as 0) -> a kn x L tile. */
static void rows_to_tile(const float *rows, long ld, int nl, int kn, float *t)
{
#if defined(__AVX512F__) && L == 16
    __m512 r[16];
    __mmask16 m = (__mmask16)((1u << kn) - 1u);
    for (int l = 0; l < 16; l++)
        r[l] = l < nl ? _mm512_maskz_loadu_ps(m, rows + l * ld) : _mm512_setzero_ps();
    transpose16(r);
    for (int k = 0; k < kn; k++)
        _mm512_storeu_ps(t + k * L, r[k]);
#else
    for (int l = 0; l < L; l++)
        for (int k = 0; k < kn; k++)
            t[k * L + l] = l < nl ? rows[l * ld + k] : 0.0f;
#endif
}

/* (batch, K) rows (stride ld) -> (nb, K, L) blocks, zero past the batch. */
void to_blocked(int nt, int B, int K, const float *src, long ld, float *dst)
{
    int nb = (B + L - 1) / L;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int blk = 0; blk < nb; blk++) {
        int nl = B - blk * L < L ? B - blk * L : L;
        for (int k0 = 0; k0 < K; k0 += 16) {
            int kn = K - k0 < 16 ? K - k0 : 16;
            rows_to_tile(src + (long)blk * L * ld + k0, ld, nl, kn, dst + ((long)blk * K + k0) * L);
        }
    }
}

/* (nb, K, L) blocks -> (batch, K) rows (stride ld); with ``sigmoid`` set, the logistic sigmoid of
 * each value (the canvases that generation returns), computed on contiguous tiles of 16 x L
 * values before they are transposed. */
void from_blocked(int nt, int B, int K, const float *src, float *dst, long ld, int sigmoid)
{
    int nb = (B + L - 1) / L;
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
        float tile[16 * L];
#pragma omp for schedule(static)
        for (int blk = 0; blk < nb; blk++) {
            int nl = B - blk * L < L ? B - blk * L : L;
            for (int k0 = 0; k0 < K; k0 += 16) {
                int kn = K - k0 < 16 ? K - k0 : 16;
                const float *s = src + ((long)blk * K + k0) * L;
                if (sigmoid) {
#pragma omp simd
                    for (int e = 0; e < kn * L; e++)
                        tile[e] = sigm(s[e]);
                    s = tile;
                }
                tile_to_rows(s, kn, dst + (long)blk * L * ld + k0, ld, nl);
            }
        }
        restore_denormals(csr);
    }
}

/* Generation without write attention, eqs (15), (18): canvas += inc + bias; out = sigmoid(canvas).
 * canvas and out are rows of K values (out with stride ldo), inc rows with stride ldi. */
void accumulate_sigmoid(int nt, int B, int K, float *canvas, const float *inc, long ldi, const float *bias, float *out,
                        long ldo)
{
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            float *c = canvas + (long)b * K, *o = out + b * ldo;
            const float *in = inc + b * ldi;
#pragma omp simd
            for (int k = 0; k < K; k++) {
                float v = c[k] + in[k] + bias[k];
                c[k] = v;
                o[k] = sigm(v);
            }
        }
        restore_denormals(csr);
    }
}

/* Gather K values per image of block blk from rows (stride ld) into (K, L); zeros past the batch. */
static void gather(int B, int blk, int K, const float *rows, long ld, float *out)
{
    for (int l = 0; l < L; l++) {
        int b = blk * L + l;
        for (int k = 0; k < K; k++)
            out[k * L + l] = b < B ? rows[(long)b * ld + k] : 0.0f;
    }
}

/* Scatter (K, L) into rows (stride ld) for the images of block blk that exist. */
static void scatter(int B, int blk, int K, const float *in, float *rows, long ld)
{
    for (int l = 0; l < L && blk * L + l < B; l++) {
        float *row = rows + (long)(blk * L + l) * ld;
        for (int k = 0; k < K; k++)
            row[k] = in[k * L + l];
    }
}

static inline float grid_offset(int i, int N) { return (float)(i + 1) - 0.5f * (float)N - 0.5f; } /* (19) */

/* Eqs (22)-(26) for one block, from raw (5, L). */
static void filters_block(const float *raw, int N, int Wd, int Ht, float *F, float *Zn, float *mu, float *sc)
{
    int P = Wd > Ht ? Wd : Ht;
    float stride = (float)(P - 1) / (float)(N - 1); /* (24) */
    float centre[2][L], neg_inv[L], delta[L];
    LANES {
        float s2 = exp_f(raw[2 * L + l]);
        delta[l] = stride * exp_f(raw[3 * L + l]);
        sc[l] = s2;
        sc[L + l] = delta[l];
        sc[2 * L + l] = exp_f(raw[4 * L + l]);
        centre[0][l] = (raw[l] + 1.0f) * (float)(Wd + 1) * 0.5f;     /* (22) */
        centre[1][l] = (raw[L + l] + 1.0f) * (float)(Ht + 1) * 0.5f; /* (23) */
        neg_inv[l] = -1.0f / (2.0f * s2);
    }
    for (int ax = 0; ax < 2; ax++) {
        int len = ax ? Ht : Wd;
        for (int i = 0; i < N; i++) {
            float m[L], z[L], inv[L], *f = F + (long)(ax * N + i) * P * L;
            float g = grid_offset(i, N);
            LANES {
                m[l] = centre[ax][l] + g * delta[l]; /* (19), (20) */
                z[l] = 0.0f;
            }
            for (int a = 0; a < len; a++)
                LANES {
                    float d = (float)(a + 1) - m[l];
                    float v = exp_f(d * d * neg_inv[l]); /* (25), (26) before 1/Z */
                    f[a * L + l] = v;
                    z[l] += v;
                }
            for (int a = len; a < P; a++)
                LANES f[a * L + l] = 0.0f;
            LANES inv[l] = 1.0f / (z[l] > NORMALISER_EPS ? z[l] : NORMALISER_EPS);
            for (int a = 0; a < len; a++)
                LANES f[a * L + l] *= inv[l];
            LANES {
                Zn[(ax * N + i) * L + l] = z[l];
                mu[(ax * N + i) * L + l] = m[l];
            }
        }
    }
}

/* The gradient of raw (5, L) from those of F (dF, laid out as F) and gamma (dgamma, L). */
static void raw_backward_block(const float *dF, const float *dgamma, const float *F, const float *Zn,
                               const float *mu, const float *sc, int N, int Wd, int Ht, float *out)
{
    int P = Wd > Ht ? Wd : Ht;
    float d_centre[2][L], d_delta[L], d_s2[L];
    LANES {
        d_centre[0][l] = d_centre[1][l] = 0.0f;
        d_delta[l] = d_s2[l] = 0.0f;
    }
    for (int ax = 0; ax < 2; ax++) {
        int len = ax ? Ht : Wd;
        for (int i = 0; i < N; i++) {
            const float *f = F + (long)(ax * N + i) * P * L, *d = dF + (long)(ax * N + i) * P * L;
            float dot[L], dmu[L], g = grid_offset(i, N);
            LANES dot[l] = dmu[l] = 0.0f;
            for (int a = 0; a < len; a++)
                LANES dot[l] += d[a * L + l] * f[a * L + l];
            LANES dot[l] = Zn[(ax * N + i) * L + l] > NORMALISER_EPS ? dot[l] : 0.0f; /* floored: no gradient */
            for (int a = 0; a < len; a++)
                LANES {
                    float diff = (float)(a + 1) - mu[(ax * N + i) * L + l];
                    float du = (d[a * L + l] - dot[l]) * f[a * L + l] * diff; /* through the exponent */
                    dmu[l] += du;
                    d_s2[l] += du * diff;
                }
            LANES {
                d_centre[ax][l] += dmu[l];
                d_delta[l] += dmu[l] * g;
            }
        }
    }
    LANES {
        float s2 = sc[l], delta = sc[L + l], gamma = sc[2 * L + l];
        out[l] = d_centre[0][l] * (float)(Wd + 1) * 0.5f / s2;     /* (22) */
        out[L + l] = d_centre[1][l] * (float)(Ht + 1) * 0.5f / s2; /* (23) */
        out[2 * L + l] = d_s2[l] * 0.5f / s2;                      /* d log sigma^2 */
        out[3 * L + l] = d_delta[l] * delta / s2;                  /* (24): d log delta~ */
        out[4 * L + l] = dgamma[l] * gamma;                        /* d log gamma */
    }
}

/* Sizes of one block's saved state, in floats. */
static long f_size(int N, int P) { return 2L * N * P * L; }

/* Four dot products at once, one per row j of p: out_j[l] = sum_{a < len} q[a qs + l] p[a ps + j pr + l].
 * Four independent sums keep the FMA units busy (one sum waits on its previous addition); q is
 * loaded once for the four. */
static inline void dot4(int len, const float *q, long qs, const float *p, long ps, long pr, float *o0, float *o1,
                        float *o2, float *o3)
{
    float s0[L], s1[L], s2[L], s3[L];
    LANES s0[l] = s1[l] = s2[l] = s3[l] = 0.0f;
    for (int a = 0; a < len; a++) {
        const float *qa = q + a * qs, *pa = p + a * ps;
        LANES {
            s0[l] += qa[l] * pa[l];
            s1[l] += qa[l] * pa[pr + l];
            s2[l] += qa[l] * pa[2 * pr + l];
            s3[l] += qa[l] * pa[3 * pr + l];
        }
    }
    LANES {
        o0[l] = s0[l];
        o1[l] = s1[l];
        o2[l] = s2[l];
        o3[l] = s3[l];
    }
}

/* One dot product of the same form (the rows left over after groups of four). */
static inline void dot1(int len, const float *q, long qs, const float *p, long ps, float *o)
{
    float s[L];
    LANES s[l] = 0.0f;
    for (int a = 0; a < len; a++)
        LANES s[l] += q[a * qs + l] * p[a * ps + l];
    LANES o[l] = s[l];
}

/* out_j[l] = sum_{a < len} q[a qs + l] p[j pr + a ps + l] for the rows j < count, four at a time. */
static void dot_rows(int count, int len, const float *q, long qs, const float *p, long ps, long pr, float *out)
{
    int j = 0;
    for (; j + 4 <= count; j += 4)
        dot4(len, q, qs, p + j * pr, ps, pr, out + j * L, out + (j + 1) * L, out + (j + 2) * L, out + (j + 3) * L);
    for (; j < count; j++)
        dot1(len, q, qs, p + j * pr, ps, out + j * L);
}

/* Read with attention, eqs (3), (21)-(27), for one step. Blocked: x, canvas (c_{t-1}), x_hat (out),
 * and the saved state F, Zn, mu, sc, left (2C, N, H, L: F_X img^T per image), glimpse (2C*N*N, L).
 * Rows: raw (the read columns of the product of h^dec_{t-1}) and r (out: the encoder input, gamma
 * times the glimpses, eq. 27). With canvas and x_hat both NULL it reads the image alone (the
 * classifier of section 4.1): C glimpses, and left, glimpse and r hold C channels instead of 2C. */
void read_forward(int nt, int B, int C, int Ht, int Wd, int N, const float *x, const float *canvas, float *x_hat,
                  const float *raw, long ldraw, float *F, float *Zn, float *mu, float *sc, float *left,
                  float *glimpse, float *r, long ldr)
{
    int P = Wd > Ht ? Wd : Ht, HW = Ht * Wd, pix = C * HW, NN = N * N, nb = (B + L - 1) / L;
    int K = canvas ? 2 * C : C; /* images read: [x, x_hat], or x alone */
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
        float *rawb = malloc(sizeof(float) * (5 * L + K * NN * L));
        float *rb = rawb + 5 * L;
#pragma omp for schedule(static)
        for (int blk = 0; blk < nb; blk++) {
            const float *xb = x + (long)blk * pix * L;
            float *xh = canvas ? x_hat + (long)blk * pix * L : NULL;
            float *Fb = F + blk * f_size(N, P), *scb = sc + blk * 3 * L;
            float *lb = left + (long)blk * K * N * Ht * L, *gb = glimpse + (long)blk * K * NN * L;
            if (canvas) {
                const float *cb = canvas + (long)blk * pix * L;
                for (long k = 0; k < (long)pix * L; k++)
                    xh[k] = xb[k] - sigm(cb[k]); /* (3) */
            }
            gather(B, blk, 5, raw, ldraw, rawb);
            filters_block(rawb, N, Wd, Ht, Fb, Zn + blk * 2 * N * L, mu + blk * 2 * N * L, scb);
            const float *FX = Fb, *FY = Fb + (long)N * P * L;
            for (int k = 0; k < K; k++) {
                const float *img = (k < C ? xb : xh) + (long)(k % C) * HW * L;
                float *lk = lb + (long)k * N * Ht * L;
                /* lk[n][h] = sum_w img[h][w] F_X[n][w] (img F_X^T, transposed) */
                for (int n = 0; n < N; n++)
                    dot_rows(Ht, Wd, FX + (long)n * P * L, L, img, L, (long)Wd * L, lk + (long)n * Ht * L);
                /* glimpse[m][n] = sum_h F_Y[m][h] lk[n][h] */
                for (int m = 0; m < N; m++) {
                    float *o = gb + (long)(k * NN + m * N) * L;
                    dot_rows(N, Ht, FY + (long)m * P * L, L, lk, L, (long)Ht * L, o);
                    for (int n = 0; n < N; n++)
                        LANES rb[(k * NN + m * N + n) * L + l] = scb[2 * L + l] * o[n * L + l]; /* (27) */
                }
            }
            scatter(B, blk, K * NN, rb, r, ldr);
        }
        free(rawb);
        restore_denormals(csr);
    }
}

/* Backward of read_forward: from the rows d_r (gradient of the glimpse part of the encoder input)
 * the rows d_raw, and the gradient through x^_t added to the blocked d_canvas (dL/dc_{t-1}). With
 * x_hat and d_canvas both NULL, the backward of the image-only read (C channels). */
void read_backward(int nt, int B, int C, int Ht, int Wd, int N, const float *x, const float *x_hat,
                   const float *F, const float *Zn, const float *mu, const float *sc, const float *left,
                   const float *glimpse, const float *d_r, long lddr, float *d_raw, long lddraw, float *d_canvas)
{
    int P = Wd > Ht ? Wd : Ht, HW = Ht * Wd, pix = C * HW, NN = N * N, nb = (B + L - 1) / L;
    int K = x_hat ? 2 * C : C; /* images read: [x, x_hat], or x alone */
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
        size_t need = (size_t)(K * NN + K * N * Ht + 2 * N * P + (x_hat ? HW : 0) + 7) * L;
        float *dG = malloc(sizeof(float) * need);
        float *v = dG + K * NN * L, *dF = v + (long)K * N * Ht * L, *dxh = dF + (long)2 * N * P * L;
        float *dgamma = dxh + (x_hat ? (long)HW * L : 0), *draw = dgamma + L; /* dxh: only with x_hat */
#pragma omp for schedule(static)
        for (int blk = 0; blk < nb; blk++) {
            const float *xb = x + (long)blk * pix * L, *xh = x_hat ? x_hat + (long)blk * pix * L : NULL;
            const float *Fb = F + blk * f_size(N, P), *scb = sc + blk * 3 * L;
            const float *lb = left + (long)blk * K * N * Ht * L, *gb = glimpse + (long)blk * K * NN * L;
            const float *FX = Fb, *FY = Fb + (long)N * P * L;
            float *dcb = d_canvas ? d_canvas + (long)blk * pix * L : NULL;
            gather(B, blk, K * NN, d_r, lddr, dG);
            LANES dgamma[l] = 0.0f;
            for (int e = 0; e < K * NN; e++)
                LANES {
                    dgamma[l] += dG[e * L + l] * gb[e * L + l]; /* (27) */
                    dG[e * L + l] *= scb[2 * L + l];
                }
            /* v[k][n][h] = sum_m dG[k][m][n] F_Y[m][h] (F_Y^T dG[k], transposed) */
            for (int k = 0; k < K; k++)
                for (int n = 0; n < N; n++)
                    for (int h = 0; h < Ht; h++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        for (int m = 0; m < N; m++)
                            LANES s[l] += dG[(k * NN + m * N + n) * L + l] * FY[(m * P + h) * L + l];
                        LANES v[((k * N + n) * Ht + h) * L + l] = s[l];
                    }
            for (long e = 0; e < (long)2 * N * P * L; e++)
                dF[e] = 0.0f;
            /* dF_X[n][w] = sum_k sum_h v[k][n][h] img_k[h][w], four w at a time */
            for (int k = 0; k < K; k++) {
                const float *img = (k < C ? xb : xh) + (long)(k % C) * HW * L;
                for (int n = 0; n < N; n++) {
                    const float *vn = v + (long)(k * N + n) * Ht * L;
                    float *d = dF + (long)n * P * L, s[4][L];
                    int w = 0;
                    for (; w + 4 <= Wd; w += 4) {
                        dot4(Ht, vn, L, img + (long)w * L, (long)Wd * L, L, s[0], s[1], s[2], s[3]);
                        for (int j = 0; j < 4; j++)
                            LANES d[(w + j) * L + l] += s[j][l];
                    }
                    for (; w < Wd; w++) {
                        dot1(Ht, vn, L, img + (long)w * L, (long)Wd * L, s[0]);
                        LANES d[w * L + l] += s[0][l];
                    }
                }
            }
            /* dF_Y[m][h] = sum_k sum_n dG[k][m][n] left[k][n][h] */
            for (int m = 0; m < N; m++)
                for (int h = 0; h < Ht; h++) {
                    float s[L];
                    LANES s[l] = 0.0f;
                    for (int k = 0; k < K; k++)
                        for (int n = 0; n < N; n++)
                            LANES s[l] += dG[(k * NN + m * N + n) * L + l] * lb[((k * N + n) * Ht + h) * L + l];
                    LANES dF[((N + m) * P + h) * L + l] = s[l];
                }
            /* d x^[c] = v[C + c]^T F_X, then through (3): d_canvas += d x^ * (s - 1) s, s = x - x^ */
            for (int c = 0; c < (x_hat ? C : 0); c++) {
                for (int h = 0; h < Ht; h++)
                    for (int w = 0; w < Wd; w++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        for (int n = 0; n < N; n++)
                            LANES s[l] += v[(((C + c) * N + n) * Ht + h) * L + l] * FX[(n * P + w) * L + l];
                        LANES dxh[(h * Wd + w) * L + l] = s[l];
                    }
                const float *xc = xb + (long)c * HW * L, *xhc = xh + (long)c * HW * L;
                float *dcc = dcb + (long)c * HW * L;
                for (long e = 0; e < (long)HW * L; e++) {
                    float s = xc[e] - xhc[e];
                    dcc[e] += dxh[e] * (s - 1.0f) * s;
                }
            }
            raw_backward_block(dF, dgamma, Fb, Zn + blk * 2 * N * L, mu + blk * 2 * N * L, scb, N, Wd, Ht, draw);
            scatter(B, blk, 5, draw, d_raw, lddraw);
        }
        free(dG);
        restore_denormals(csr);
    }
}

/* Write with attention, eqs (21)-(26), (28)-(29), and (8) for one step. Rows: raw and w (the write
 * columns of the product of h^dec_t). Blocked: the saved state F, Zn, mu, sc, patch (C*N*N, L) and
 * right (C, N, W, L: w F_X per image), and the canvas, to which F_Y^T w F_X / gamma is added. */
void write_forward(int nt, int B, int C, int Ht, int Wd, int N, const float *raw, long ldraw, const float *w,
                   long ldw, float *F, float *Zn, float *mu, float *sc, float *patch, float *right, float *canvas)
{
    int P = Wd > Ht ? Wd : Ht, HW = Ht * Wd, pix = C * HW, NN = N * N, nb = (B + L - 1) / L;
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
        float rawb[5 * L];
#pragma omp for schedule(static)
        for (int blk = 0; blk < nb; blk++) {
            float *Fb = F + blk * f_size(N, P), *scb = sc + blk * 3 * L, *pb = patch + (long)blk * C * NN * L;
            float *rb = right + (long)blk * C * N * Wd * L, *cb = canvas + (long)blk * pix * L;
            gather(B, blk, 5, raw, ldraw, rawb);
            gather(B, blk, C * NN, w, ldw, pb); /* (28) */
            filters_block(rawb, N, Wd, Ht, Fb, Zn + blk * 2 * N * L, mu + blk * 2 * N * L, scb);
            const float *FX = Fb, *FY = Fb + (long)N * P * L;
            float inv_gamma[L];
            LANES inv_gamma[l] = 1.0f / scb[2 * L + l];
            for (int c = 0; c < C; c++) {
                float *rc = rb + (long)c * N * Wd * L, *cc = cb + (long)c * HW * L;
                for (int m = 0; m < N; m++)
                    for (int a = 0; a < Wd; a++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        for (int n = 0; n < N; n++)
                            LANES s[l] += pb[(c * NN + m * N + n) * L + l] * FX[(n * P + a) * L + l];
                        LANES rc[(m * Wd + a) * L + l] = s[l];
                    }
                for (int h = 0; h < Ht; h++)
                    for (int a = 0; a < Wd; a++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        for (int m = 0; m < N; m++)
                            LANES s[l] += FY[(m * P + h) * L + l] * rc[(m * Wd + a) * L + l];
                        LANES cc[(h * Wd + a) * L + l] += s[l] * inv_gamma[l]; /* (29), (8) */
                    }
            }
        }
        restore_denormals(csr);
    }
}

/* Backward of write_forward from the blocked d_canvas = dL/dc_t: the rows d_patch and d_raw. */
void write_backward(int nt, int B, int C, int Ht, int Wd, int N, const float *F, const float *Zn, const float *mu,
                    const float *sc, const float *patch, const float *right, const float *d_canvas, float *d_patch,
                    long lddp, float *d_raw, long lddraw)
{
    int P = Wd > Ht ? Wd : Ht, HW = Ht * Wd, pix = C * HW, NN = N * N, nb = (B + L - 1) / L;
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
        size_t need = (size_t)(C * N * Wd + 2 * N * P + C * NN + 6) * L;
        float *d_right = malloc(sizeof(float) * need);
        float *dF = d_right + (long)C * N * Wd * L, *dp = dF + (long)2 * N * P * L, *dgamma = dp + (long)C * NN * L;
        float *draw = dgamma + L;
#pragma omp for schedule(static)
        for (int blk = 0; blk < nb; blk++) {
            const float *Fb = F + blk * f_size(N, P), *scb = sc + blk * 3 * L, *pb = patch + (long)blk * C * NN * L;
            const float *rb = right + (long)blk * C * N * Wd * L, *du = d_canvas + (long)blk * pix * L;
            const float *FX = Fb, *FY = Fb + (long)N * P * L;
            float inv_gamma[L];
            LANES {
                inv_gamma[l] = 1.0f / scb[2 * L + l];
                dgamma[l] = 0.0f;
            }
            for (long e = 0; e < (long)2 * N * P * L; e++)
                dF[e] = 0.0f;
            for (int c = 0; c < C; c++) {
                const float *duc = du + (long)c * HW * L, *rc = rb + (long)c * N * Wd * L;
                float *drc = d_right + (long)c * N * Wd * L;
                /* d_right[c][m][a] = sum_h F_Y[m][h] d_u[c][h][a], d_u = d_canvas / gamma */
                for (int m = 0; m < N; m++)
                    for (int a = 0; a < Wd; a++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        for (int h = 0; h < Ht; h++)
                            LANES s[l] += FY[(m * P + h) * L + l] * duc[(h * Wd + a) * L + l];
                        LANES {
                            s[l] *= inv_gamma[l];
                            drc[(m * Wd + a) * L + l] = s[l];
                            dgamma[l] -= s[l] * rc[(m * Wd + a) * L + l] * inv_gamma[l]; /* (29): 1/gamma */
                        }
                    }
                /* d patch[c][m][n] = sum_a d_right[c][m][a] F_X[n][a]; dF_X[n][a] += patch[c][m][n] d_right[c][m][a] */
                for (int m = 0; m < N; m++)
                    for (int n = 0; n < N; n++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        const float *pk = pb + (c * NN + m * N + n) * L;
                        for (int a = 0; a < Wd; a++)
                            LANES {
                                s[l] += drc[(m * Wd + a) * L + l] * FX[(n * P + a) * L + l];
                                dF[(n * P + a) * L + l] += pk[l] * drc[(m * Wd + a) * L + l];
                            }
                        LANES dp[(c * NN + m * N + n) * L + l] = s[l];
                    }
                /* dF_Y[m][h] += sum_a right[c][m][a] d_u[c][h][a] */
                for (int m = 0; m < N; m++)
                    for (int h = 0; h < Ht; h++) {
                        float s[L];
                        LANES s[l] = 0.0f;
                        for (int a = 0; a < Wd; a++)
                            LANES s[l] += rc[(m * Wd + a) * L + l] * duc[(h * Wd + a) * L + l];
                        LANES dF[((N + m) * P + h) * L + l] += s[l] * inv_gamma[l];
                    }
            }
            scatter(B, blk, C * NN, dp, d_patch, lddp);
            raw_backward_block(dF, dgamma, Fb, Zn + blk * 2 * N * L, mu + blk * 2 * N * L, scb, N, Wd, Ht, draw);
            scatter(B, blk, 5, draw, d_raw, lddraw);
        }
        free(d_right);
        restore_denormals(csr);
    }
}

/* The blocked canvas gradient summed over the images (the gradient of the learned c_0). */
void blocked_sum(int B, int K, const float *src, float *out)
{
    int nb = (B + L - 1) / L;
    for (int k = 0; k < K; k++)
        out[k] = 0.0f;
    for (int blk = 0; blk < nb; blk++)
        for (int k = 0; k < K; k++) {
            float s = 0.0f;
            for (int l = 0; l < L && blk * L + l < B; l++)
                s += src[((long)blk * K + k) * L + l];
            out[k] += s;
        }
}

/* ------------------------------------------------------------------------------ bfloat16 products
 * C = beta C + A B (+ bias) with A and B rounded to bfloat16 (round to nearest even, as PyTorch's
 * conversion) and every sum accumulated in float32: the matrix products of drawnet.fast when the
 * run's precision is bf16. C is float32 and stays float32 (no rounding of the result), so the
 * products can add into the float32 gate and gradient buffers as the float32 path does.
 *
 * On a CPU with AVX512-BF16 one VDPBF16PS instruction multiplies 16 x 2 bfloat16 pairs and adds
 * them to 16 float32 sums; this is 2.1-2.4x the float32 product rate at DRAW's shapes on the AMD
 * EPYC of bench/RESULTS.md. B is packed once (a weight is packed once per pass and used by all T
 * steps): panels of NR columns, each a sequence over k pairs p of NR 32-bit words
 * bf16(B[2p, n]) | bf16(B[2p + 1, n]) << 16 (zero past K and N). A is packed on each call into
 * blocks of MR rows, the same words along k. A micro-kernel keeps an MR x NR tile of C in 24
 * registers. Without AVX512-BF16 (another CPU, or the portable build) the same functions compute
 * the same rounded products with scalar code, for tests; drawnet only chooses bf16 by itself where
 * drawnet_bf16_native() is 1. */
#include <stdint.h>
#define GEMM_MR 12
#define GEMM_NR 32

int drawnet_bf16_native(void)
{
#if defined(__AVX512BF16__)
    return 1;
#else
    return 0;
#endif
}

static inline uint32_t bf16_bits(float f)
{
    union { float f; uint32_t u; } v = {f};
    uint32_t u = v.u;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u; /* NaN stays a (quiet) NaN */
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline float bf16_value(uint32_t bits)
{
    union { uint32_t u; float f; } v = {bits << 16};
    return v.f;
}

#if defined(__AVX512BF16__)
/* 16 words bf16(lo[j]) | bf16(hi[j]) << 16 */
static inline __m512i pair_words(__m512 lo, __m512 hi)
{
    __m512i a = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}
#endif

long gemm_packed_size(int K, int N) { return (long)((N + GEMM_NR - 1) / GEMM_NR) * ((K + 1) / 2) * GEMM_NR; }
long gemm_work_size(int M, int K) { return (long)((M + GEMM_MR - 1) / GEMM_MR) * ((K + 1) / 2) * GEMM_MR; }

/* Pack B[k, n] = B[k * ldk + n * ldn] (K x N) into gemm_packed_size(K, N) words. */
void gemm_pack_b(int nt, int K, int N, const float *B, long ldk, long ldn, uint32_t *out)
{
    int K2 = (K + 1) / 2, np = (N + GEMM_NR - 1) / GEMM_NR;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int q = 0; q < np; q++) {
        uint32_t *panel = out + (long)q * K2 * GEMM_NR;
        int n0 = q * GEMM_NR, nn = N - n0 < GEMM_NR ? N - n0 : GEMM_NR;
#if defined(__AVX512BF16__)
        if (ldn == 1 && nn == GEMM_NR) { /* rows of B contiguous: 16 columns at a time */
            for (int p = 0; p < K2; p++) {
                const float *r0 = B + (long)(2 * p) * ldk + n0;
                for (int v = 0; v < GEMM_NR; v += 16) {
                    __m512 lo = _mm512_loadu_ps(r0 + v);
                    __m512 hi = 2 * p + 1 < K ? _mm512_loadu_ps(r0 + ldk + v) : _mm512_setzero_ps();
                    _mm512_storeu_si512(panel + (long)p * GEMM_NR + v, pair_words(lo, hi));
                }
            }
            continue;
        }
#endif
        for (int p = 0; p < K2; p++)
            for (int j = 0; j < GEMM_NR; j++) {
                uint32_t w = 0;
                if (j < nn) {
                    const float *b = B + (long)(2 * p) * ldk + (long)(n0 + j) * ldn;
                    w = bf16_bits(b[0]) | (2 * p + 1 < K ? bf16_bits(b[ldk]) << 16 : 0u);
                }
                panel[(long)p * GEMM_NR + j] = w;
            }
    }
}

/* Rows m0 .. m0 + mm - 1 of A[m, k] = A[m * ldm + k * ldk] as words [p][i], GEMM_MR per p (rows
 * past mm are 0). */
static void gemm_pack_a(int K, const float *A, long ldm, long ldk, int m0, int mm, uint32_t *out)
{
    int K2 = (K + 1) / 2;
#if defined(__AVX512BF16__)
    if (ldm == 1) { /* A is a transposed row-major matrix: the MR rows of A are contiguous */
        __mmask16 mask = (__mmask16)((1u << mm) - 1u);
        for (int p = 0; p < K2; p++) {
            const float *r0 = A + (long)(2 * p) * ldk + m0;
            __m512 lo = _mm512_maskz_loadu_ps(mask, r0);
            __m512 hi = 2 * p + 1 < K ? _mm512_maskz_loadu_ps(mask, r0 + ldk) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(out + (long)p * GEMM_MR, (__mmask16)((1u << GEMM_MR) - 1u), pair_words(lo, hi));
        }
        return;
    }
    if (ldk == 1) { /* row-major A: a converted row read as 32-bit words is its sequence of pairs */
        uint32_t tmp[GEMM_MR][64];
        for (int p0 = 0; p0 < K2; p0 += 64) {
            int np = K2 - p0 < 64 ? K2 - p0 : 64, kk = K - 2 * p0 < 128 ? K - 2 * p0 : 128;
            for (int i = 0; i < GEMM_MR; i++) {
                if (i >= mm) {
                    memset(tmp[i], 0, sizeof tmp[i]);
                    continue;
                }
                const float *a = A + (long)(m0 + i) * ldm + 2 * p0;
                for (int v = 0; v < kk; v += 16) {
                    int left = kk - v;
                    __mmask16 m = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1u);
                    __m256i w = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, a + v));
                    _mm256_storeu_si256((__m256i *)(tmp[i] + v / 2), w);
                }
            }
            for (int p = 0; p < np; p++)
                for (int i = 0; i < GEMM_MR; i++)
                    out[(long)(p0 + p) * GEMM_MR + i] = tmp[i][p];
        }
        return;
    }
#endif
    for (int i = 0; i < GEMM_MR; i++) {
        const float *a = A + (long)(m0 + (i < mm ? i : 0)) * ldm;
        for (int p = 0; p < K2; p++) {
            uint32_t w = 0;
            if (i < mm)
                w = bf16_bits(a[(long)(2 * p) * ldk]) | (2 * p + 1 < K ? bf16_bits(a[(long)(2 * p + 1) * ldk]) << 16 : 0u);
            out[(long)p * GEMM_MR + i] = w;
        }
    }
}

/* One MR x NR tile: C[i, j] (i < mm, j < nn) = D[i, j] + sum_p a[p][i] . b[p][j] + bias[j] (D may be
 * C itself, or NULL for none). */
static void gemm_tile(int K2, const uint32_t *a, const uint32_t *b, float *C, long ldc, const float *D, long ldd,
                      int mm, int nn, const float *bias)
{
#if defined(__AVX512BF16__)
    __m512 c[GEMM_MR][2];
    for (int i = 0; i < GEMM_MR; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int p = 0; p < K2; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (long)p * GEMM_NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (long)p * GEMM_NR + 16);
        const uint32_t *ap = a + (long)p * GEMM_MR;
#pragma GCC unroll 12
        for (int i = 0; i < GEMM_MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[i]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], av, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], av, b1);
        }
    }
    __mmask16 m0 = nn >= 16 ? 0xffff : (__mmask16)((1u << nn) - 1u);
    __mmask16 m1 = nn >= 32 ? 0xffff : nn <= 16 ? 0 : (__mmask16)((1u << (nn - 16)) - 1u);
    __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int i = 0; i < mm; i++) {
        float *r = C + (long)i * ldc;
        __m512 v0 = _mm512_add_ps(c[i][0], bias0), v1 = _mm512_add_ps(c[i][1], bias1);
        if (D) {
            const float *d = D + (long)i * ldd;
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, d));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, d + 16));
        }
        _mm512_mask_storeu_ps(r, m0, v0);
        _mm512_mask_storeu_ps(r + 16, m1, v1);
    }
#else
    for (int i = 0; i < mm; i++)
        for (int j = 0; j < nn; j++) {
            float s = 0.0f;
            for (int p = 0; p < K2; p++) {
                uint32_t x = a[(long)p * GEMM_MR + i], y = b[(long)p * GEMM_NR + j];
                s += bf16_value(x & 0xffffu) * bf16_value(y & 0xffffu) + bf16_value(x >> 16) * bf16_value(y >> 16);
            }
            C[(long)i * ldc + j] = (D ? D[(long)i * ldd + j] : 0.0f) + s + (bias ? bias[j] : 0.0f);
        }
#endif
}

/* C (M x N, row stride ldc) = D + A B + bias, with A[m, k] = A[m * ldm + k * ldk] (float32, any
 * strides: a transposed view too), B packed by gemm_pack_b, D (M x N, row stride ldd; C itself to
 * accumulate) and bias (N values) each optional (NULL), and ``work`` gemm_work_size(M, K) words of
 * scratch for the packed A. */
void gemm_bf16(int nt, int M, int N, int K, const float *A, long ldm, long ldk, const uint32_t *Bp, float *C,
               long ldc, const float *D, long ldd, const float *bias, uint32_t *work)
{
    int K2 = (K + 1) / 2, mb = (M + GEMM_MR - 1) / GEMM_MR, nb = (N + GEMM_NR - 1) / GEMM_NR;
#pragma omp parallel num_threads(nt)
    {
        unsigned csr = flush_denormals();
#pragma omp for schedule(static)
        for (int q = 0; q < mb; q++) {
            int mm = M - q * GEMM_MR < GEMM_MR ? M - q * GEMM_MR : GEMM_MR;
            gemm_pack_a(K, A, ldm, ldk, q * GEMM_MR, mm, work + (long)q * K2 * GEMM_MR);
        }
        /* column panels outermost: each thread keeps its panel of B in cache over all row blocks */
#pragma omp for schedule(static) collapse(2)
        for (int qn = 0; qn < nb; qn++)
            for (int qm = 0; qm < mb; qm++) {
                int mm = M - qm * GEMM_MR < GEMM_MR ? M - qm * GEMM_MR : GEMM_MR;
                int nn = N - qn * GEMM_NR < GEMM_NR ? N - qn * GEMM_NR : GEMM_NR;
                gemm_tile(K2, work + (long)qm * K2 * GEMM_MR, Bp + (long)qn * K2 * GEMM_NR,
                          C + (long)qm * GEMM_MR * ldc + (long)qn * GEMM_NR, ldc,
                          D ? D + (long)qm * GEMM_MR * ldd + (long)qn * GEMM_NR : 0, ldd, mm, nn,
                          bias ? bias + qn * GEMM_NR : 0);
            }
        restore_denormals(csr);
    }
}
