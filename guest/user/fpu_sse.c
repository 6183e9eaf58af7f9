/* The SSE2 half of fpu: built with -msse2 -mfpmath=sse. */
#include "fpu_sse.h"

static void store(double v, double scale, struct sse_value *out)
{
    union {
        double d;
        unsigned u[2];
    } b = { .d = v };
    out->lo = b.u[0];
    out->hi = b.u[1];
    out->scaled = (int)(v * scale);
}

unsigned sse_mxcsr(void)
{
    unsigned m;
    __asm__ volatile("stmxcsr %0" : "=m"(m));
    return m;
}

__attribute__((noipa)) void sse_basel(int n, struct sse_value *out)
{
    double s = 0.0;
    for (int k = 1; k <= n; k++)
        s += 1.0 / ((double)k * k);
    store(s, 1e6, out);
}

__attribute__((noipa)) void sse_sqrt(int x, struct sse_value *out)
{
    double r = x;
    __asm__("sqrtsd %0, %0" : "+x"(r));
    store(r, 1e9, out);
}
