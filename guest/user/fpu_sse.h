#ifndef GUEST_FPU_SSE_H
#define GUEST_FPU_SSE_H

/* A double computed with SSE2, its IEEE bits, and (int)(value * scale) done with SSE too,
 * so no x87 instruction ever touches it. */
struct sse_value {
    unsigned lo, hi;
    int scaled;
};

unsigned sse_mxcsr(void);
void sse_basel(int n, struct sse_value *out);   /* sum 1/k^2, k = 1..n; scale 1e6 */
void sse_sqrt(int x, struct sse_value *out);     /* sqrt(x); scale 1e9 */

#endif
