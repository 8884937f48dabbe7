/*
 * Fused per-row comparison of class-major baseline and candidate outputs.
 *
 * One pass over both (classes x rows) matrices computes, for every row, what
 * runners/families/classification/metrics.py's numpy path computes in about twenty passes: top-1 of each
 * model, agreement, mean and max absolute difference, KL(softmax(b) || softmax(c)),
 * cosine similarity, and correctness against the labels. Rows are processed in
 * blocks whose temporaries stay in L1, and the inner loops run across rows so the
 * compiler vectorises them (expf included, through libmvec).
 *
 * Callers must pass finite values only: the module is compiled with -ffast-math.
 * It is loaded through ctypes; the Python module init exists so the build tools
 * and the import system can find it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#define BLOCK 256

/* One build serves every x86-64 machine: the loader picks the widest variant the CPU runs. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WIDEST_ISA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WIDEST_ISA
#endif

/* Output rows of `table`, in the order of runners.metrics.QUANTITIES. */
enum { AGREE, MEAN_ABS, KL, COSINE, CORRECT_B, CORRECT_C, B_ONLY, C_ONLY, QUANTITIES };

static inline void argmax_block(const float *x, int64_t classes, int64_t rows, int64_t lo, int64_t n,
                         float *best, int32_t *top) {
    for (int64_t i = 0; i < n; i++) { best[i] = x[lo + i]; top[i] = 0; }
    for (int64_t k = 1; k < classes; k++) {
        const float *row = x + k * rows + lo;
        for (int64_t i = 0; i < n; i++) {
            int better = row[i] > best[i]; /* strict: the first index wins ties, as numpy's argmax */
            best[i] = better ? row[i] : best[i];
            top[i] = better ? (int32_t)k : top[i];
        }
    }
}

WIDEST_ISA void revalidator_row_metrics(const float *b, const float *c, int64_t classes, int64_t rows,
                             const int64_t *labels, float *table, float *max_abs) {
    float max_b[BLOCK], max_c[BLOCK], sum_b[BLOCK], sum_c[BLOCK], weighted[BLOCK];
    float abs_sum[BLOCK], abs_max[BLOCK], bb[BLOCK], cc[BLOCK], bc[BLOCK];
    int32_t top_b[BLOCK], top_c[BLOCK];
#if defined(__x86_64__)
    /* Flush denormals to zero while the kernel runs: softmax terms of far-from-top classes
       are denormal, and each costs a microcode assist (3x slower on real model outputs). */
    unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040); /* FTZ | DAZ */
#endif
    for (int64_t lo = 0; lo < rows; lo += BLOCK) {
        int64_t n = rows - lo < BLOCK ? rows - lo : BLOCK;
        argmax_block(b, classes, rows, lo, n, max_b, top_b);
        argmax_block(c, classes, rows, lo, n, max_c, top_c);
        for (int64_t i = 0; i < n; i++) {
            sum_b[i] = sum_c[i] = weighted[i] = abs_sum[i] = abs_max[i] = bb[i] = cc[i] = bc[i] = 0.0f;
        }
        for (int64_t k = 0; k < classes; k++) {
            const float *xb = b + k * rows + lo, *xc = c + k * rows + lo;
            for (int64_t i = 0; i < n; i++) {
                /* Clamped to expf's normal range: glibc's vector expf falls back to the scalar
                   routine for a whole vector when any lane would underflow. */
                float eb = expf(fmaxf(xb[i] - max_b[i], -80.0f)), ec = expf(fmaxf(xc[i] - max_c[i], -80.0f));
                float d = xb[i] - xc[i], ad = fabsf(d);
                sum_b[i] += eb;
                sum_c[i] += ec;
                weighted[i] += eb * d;
                abs_sum[i] += ad;
                abs_max[i] = ad > abs_max[i] ? ad : abs_max[i];
                bb[i] += xb[i] * xb[i];
                cc[i] += xc[i] * xc[i];
                bc[i] += xb[i] * xc[i];
            }
        }
        for (int64_t i = 0; i < n; i++) {
            int64_t r = lo + i;
            float norms = sqrtf(bb[i] * cc[i]);
            table[AGREE * rows + r] = top_b[i] == top_c[i];
            table[MEAN_ABS * rows + r] = abs_sum[i] / (float)classes;
            /* KL(p_b || p_c) = sum_k p_b,k (b_k - c_k) - logsumexp(b) + logsumexp(c) */
            table[KL * rows + r] = weighted[i] / sum_b[i] - max_b[i] - logf(sum_b[i]) + max_c[i] + logf(sum_c[i]);
            table[COSINE * rows + r] = norms > 0.0f ? bc[i] / norms : 1.0f;
            max_abs[r] = abs_max[i];
        }
        if (labels) {
            for (int64_t i = 0; i < n; i++) {
                int64_t r = lo + i;
                int right_b = top_b[i] == labels[r], right_c = top_c[i] == labels[r];
                table[CORRECT_B * rows + r] = right_b;
                table[CORRECT_C * rows + r] = right_c;
                table[B_ONLY * rows + r] = right_b && !right_c;
                table[C_ONLY * rows + r] = !right_b && right_c;
            }
        }
    }
#if defined(__x86_64__)
    _mm_setcsr(saved_csr);
#endif
}

/* 1 when every value is finite: tested on the exponent bits, which -ffast-math cannot fold away. */
int revalidator_all_finite(const float *x, int64_t n) {
    const uint32_t *bits = (const uint32_t *)x;
    uint32_t special = 0;
    for (int64_t i = 0; i < n; i++) special |= (bits[i] & 0x7F800000u) == 0x7F800000u;
    return !special;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowmetrics",
                                    "Fused row metrics, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__rowmetrics(void) { return PyModule_Create(&module); }
