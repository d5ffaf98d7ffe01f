/*
 * romosaic._scale: out = values * factor for float32 and float16 arrays, with
 * numpy's arithmetic and rounding, to the bit.
 *
 * Level-2 images keep err and the variance planes as float16, and the flux
 * conversion must give exactly what numpy gives for
 *     (values.astype(float32) * float32(factor)).astype(out.dtype)
 * numpy converts float16 subnormals one value at a time on a slow path, and
 * variances in MJy^2/sr^2 are often subnormal, which made this conversion a
 * large part of reading an image. Here the conversions work on the bit
 * patterns (integer operations, and exact float32 steps for subnormals)
 * following numpy's own rules (IEEE round to nearest, ties to even; overflow
 * to infinity; NaN payloads kept as numpy keeps them), so they need no
 * compiler or CPU support for half precision.
 *
 * Arrays come in through the buffer protocol (no numpy headers at build
 * time), and the loop runs without the GIL, so threads may scale different
 * arrays at the same time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

static inline uint32_t
bits_of(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static inline float
float_of(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* Exact; signalling NaNs stay signalling, as in numpy. */
static inline float
half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    const uint32_t rest = h & 0x7fffu;
    /* Rebias the exponent from 15 to 127; the significand moves up 13 bits. */
    const uint32_t normal = (rest << 13) + ((uint32_t) (127 - 15) << 23);
    const uint32_t special = (rest << 13) | 0x7f800000u;
    /* A subnormal or zero is its significand times 2^-24; both factors and
     * the product are exact in float32. */
    const uint32_t tiny = bits_of((float) rest * 0x1p-24f);
    /* Selects rather than branches: planes mix subnormals and normal
     * numbers at random, and the compiler can then run the loop on vectors. */
    const uint32_t magnitude = rest >= 0x7c00u ? special : rest >= 0x0400u ? normal : tiny;
    return float_of(sign | magnitude);
}

static inline uint16_t
float_to_half(float f)
{
    const uint32_t b = bits_of(f);
    const uint32_t sign = (b >> 16) & 0x8000u;
    const uint32_t mag = b & 0x7fffffffu;
    /* Normal float16 range [2^-14, 65520): rebias, then round away the low
     * 13 bits to nearest, ties to even; a carry out of the significand
     * correctly bumps the exponent, up to infinity (0x7c00). Meaningless,
     * and not selected, outside that range. */
    const uint32_t rebiased = mag - ((uint32_t) (127 - 15) << 23);
    const uint32_t normal = (rebiased + 0x0fffu + ((rebiased >> 13) & 1u)) >> 13;
    /* Below 2^-14 a float16 is a multiple of 2^-24, which is the spacing of
     * floats in [0.5, 1): adding 0.5 rounds |f| to such a multiple with the
     * hardware's rounding (to nearest, ties to even, the default mode that
     * numpy also relies on), and the multiple is the sum's low bits. Where
     * the result is not zero (|f| > 2^-25) the exact sum has at most 48
     * significant bits, so a wider evaluation format (x87) rounds it only
     * once, the same way. */
    const uint32_t subnormal = bits_of(float_of(mag) + 0.5f) - 0x3f000000u;
    /* numpy keeps the top 10 payload bits of a NaN, and sets the lowest
     * when they are all zero so that it stays a NaN. */
    const uint32_t payload = (mag >> 13) & 0x3ffu;
    const uint32_t nan = 0x7c00u | payload | (payload == 0u);
    /* 0x47800000 is 65536: it and everything above, infinity included,
     * overflow to infinity. */
    const uint32_t magnitude = mag > 0x7f800000u    ? nan
                               : mag >= 0x47800000u ? 0x7c00u
                               : mag >= 0x38800000u ? normal
                                                    : subnormal;
    return (uint16_t) (sign | magnitude);
}

/* Where the compiler can make them, copies of the loops for CPUs with AVX2
 * (twice as many values per instruction: half the time of a float16 plane),
 * chosen when the module loads. Integer operations and float32 arithmetic
 * without fused multiply-adds give the same bits on any CPU. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* The loops, for each pair of types, out of place (restrict: the caller
 * checks that the arrays do not overlap) and in place. With no factor,
 * values are converted without a multiplication, so that a signalling NaN
 * is not made quiet: the conversion alone equals numpy's astype. */
#define LOAD_F32(x) (x)
#define LOAD_F16(x) half_to_float(x)
#define STORE_F32(x) (x)
#define STORE_F16(x) float_to_half(x)

#define DEFINE_LOOP(name, in_t, out_t, load, store)                                               \
    VECTOR_CLONES static void name(                                                            \
        const in_t *restrict in, out_t *restrict out, Py_ssize_t n, float factor, int multiply) \
    {                                                                                          \
        Py_ssize_t i;                                                                          \
        if (multiply) {                                                                        \
            for (i = 0; i < n; ++i) {                                                          \
                const float v = load(in[i]) * factor;                                          \
                out[i] = store(v);                                                             \
            }                                                                                  \
        } else {                                                                               \
            for (i = 0; i < n; ++i) {                                                          \
                out[i] = store(load(in[i]));                                                   \
            }                                                                                  \
        }                                                                                      \
    }

#define DEFINE_IN_PLACE(name, t, load, store)                                                     \
    VECTOR_CLONES static void name(t *p, Py_ssize_t n, float factor)                           \
    {                                                                                          \
        Py_ssize_t i;                                                                          \
        for (i = 0; i < n; ++i) {                                                              \
            const float v = load(p[i]) * factor;                                               \
            p[i] = store(v);                                                                   \
        }                                                                                      \
    }

DEFINE_LOOP(f32_to_f32, float, float, LOAD_F32, STORE_F32)
DEFINE_LOOP(f32_to_f16, float, uint16_t, LOAD_F32, STORE_F16)
DEFINE_LOOP(f16_to_f32, uint16_t, float, LOAD_F16, STORE_F32)
DEFINE_LOOP(f16_to_f16, uint16_t, uint16_t, LOAD_F16, STORE_F16)
DEFINE_IN_PLACE(f32_in_place, float, LOAD_F32, STORE_F32)
DEFINE_IN_PLACE(f16_in_place, uint16_t, LOAD_F16, STORE_F16)

/* ------------------------------------------------------------------------
 * Python interface
 */

/* 'f' for float32, 'e' for float16, 0 (with an exception set) otherwise. */
static char
element_type(const Py_buffer *b, const char *name)
{
    const char *f = b->format ? b->format : "B";

    if (f[0] == '@' || f[0] == '=') {
        ++f;
    }
    if (f[1] == '\0' && ((f[0] == 'f' && b->itemsize == 4) || (f[0] == 'e' && b->itemsize == 2))) {
        return f[0];
    }
    PyErr_Format(
        PyExc_TypeError, "%s must hold native float32 or float16 values (format '%s')", name,
        b->format ? b->format : "B");
    return 0;
}

static PyObject *
py_scale(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"values", "out", "factor", NULL};
    PyObject *o_values, *o_out, *o_factor = Py_None;
    Py_buffer in, out;
    char in_type, out_type;
    float factor = 1.0f;
    int multiply, k;
    Py_ssize_t n;
    const char *in_begin, *in_end, *out_begin, *out_end;
    PyObject *result = NULL;

    (void) self;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OO|O:scale", kwlist, &o_values, &o_out, &o_factor)) {
        return NULL;
    }
    multiply = o_factor != Py_None;
    if (multiply) {
        /* Rounded to float32 once, as numpy.float32(factor) does. */
        const double d = PyFloat_AsDouble(o_factor);
        if (d == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        factor = (float) d;
    }
    if (PyObject_GetBuffer(o_values, &in, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(o_out, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) !=
        0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    if (!(in_type = element_type(&in, "values")) || !(out_type = element_type(&out, "out"))) {
        goto done;
    }
    if (in.ndim != out.ndim) {
        PyErr_SetString(PyExc_ValueError, "values and out must have the same shape");
        goto done;
    }
    for (k = 0; k < in.ndim; ++k) {
        if (in.shape[k] != out.shape[k]) {
            PyErr_SetString(PyExc_ValueError, "values and out must have the same shape");
            goto done;
        }
    }
    n = in.len / in.itemsize;
    in_begin = (const char *) in.buf;
    in_end = in_begin + in.len;
    out_begin = (const char *) out.buf;
    out_end = out_begin + out.len;
    /* An out that overlaps values other than exactly, element for element,
     * would be read after being written. */
    if (n > 0 && in_begin < out_end && out_begin < in_end &&
        !(in_begin == out_begin && in_type == out_type)) {
        PyErr_SetString(
            PyExc_ValueError, "out overlaps values without being the same array of the same type");
        goto done;
    }

    Py_BEGIN_ALLOW_THREADS
    if (n > 0 && in_begin == out_begin && in_type == 'f') {
        if (multiply) {
            f32_in_place((float *) out.buf, n, factor);
        }
    } else if (n > 0 && in_begin == out_begin) {
        if (multiply) {
            f16_in_place((uint16_t *) out.buf, n, factor);
        }
        /* Converting a float16 to float32 and back gives its bits back,
         * signalling NaNs included, so there is nothing to do without a
         * factor. */
    } else if (in_type == 'f' && out_type == 'f') {
        f32_to_f32((const float *) in.buf, (float *) out.buf, n, factor, multiply);
    } else if (in_type == 'f') {
        f32_to_f16((const float *) in.buf, (uint16_t *) out.buf, n, factor, multiply);
    } else if (out_type == 'f') {
        f16_to_f32((const uint16_t *) in.buf, (float *) out.buf, n, factor, multiply);
    } else {
        f16_to_f16((const uint16_t *) in.buf, (uint16_t *) out.buf, n, factor, multiply);
    }
    Py_END_ALLOW_THREADS

    Py_INCREF(Py_None);
    result = Py_None;

done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&in);
    return result;
}

static PyMethodDef methods[] = {
    {"scale", (PyCFunction) (void (*)(void)) py_scale, METH_VARARGS | METH_KEYWORDS,
     "scale(values, out, factor=None) -> None\n\n"
     "out = values * float32(factor), computed in float32 and rounded to out's type as\n"
     "numpy rounds (float16: to nearest, ties to even, subnormals included). values\n"
     "and out: C-contiguous float32 or float16 buffers of one shape; out may be\n"
     "values itself. Without a factor, values are only converted (numpy's astype).\n"
     "Runs without the GIL."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scale",
    "romosaic's compiled scaling of float32 and float16 arrays.", -1, methods, NULL, NULL,
    NULL, NULL};

PyMODINIT_FUNC
PyInit__scale(void)
{
    return PyModule_Create(&module);
}
