/* Floating point: x87 long double arithmetic here (-mfpmath=387), SSE2 double arithmetic
 * in fpu_sse.c (-msse2 -mfpmath=sse). Only +, -, *, /, sqrt and conversions, which IEEE
 * rounds exactly, so every emulator must print the same bits. Exit status 17. */
#include "fmt.h"
#include "fpu_sse.h"

union ext {
    long double v;
    struct {
        unsigned lo, hi;       /* 64-bit significand, explicit integer bit */
        unsigned short se;     /* sign and 15-bit biased exponent */
    } bits;
};

/* 1/1 + 1/2 + ... + 1/n, every step rounded to the 64-bit significand. */
__attribute__((noipa)) long double harmonic(int n)
{
    long double h = 0.0L;
    for (int k = 1; k <= n; k++)
        h += 1.0L / k;
    return h;
}

__attribute__((noipa)) long double x87_sqrt(long double x)
{
    __asm__("fsqrt" : "+t"(x));
    return x;
}

static void show_ext(const char *name, long double v, long double scale, const char *scale_name)
{
    union ext e = { .v = v };

    put_str(STDOUT, "x87 ");
    put_str(STDOUT, name);
    put_str(STDOUT, " bits ");
    put_hexn(STDOUT, e.bits.se, 4);
    put_char(STDOUT, ' ');
    put_hex64(STDOUT, e.bits.hi, e.bits.lo);
    put_str(STDOUT, "\nx87 ");
    put_str(STDOUT, name);
    put_str(STDOUT, scale_name);
    put_char(STDOUT, ' ');
    put_dec(STDOUT, (int)(v * scale));
    put_char(STDOUT, '\n');
}

static void show_double(const char *name, const struct sse_value *r, const char *scale_name)
{
    put_str(STDOUT, "sse ");
    put_str(STDOUT, name);
    put_str(STDOUT, " bits ");
    put_hex64(STDOUT, r->hi, r->lo);
    put_str(STDOUT, "\nsse ");
    put_str(STDOUT, name);
    put_str(STDOUT, scale_name);
    put_char(STDOUT, ' ');
    put_dec(STDOUT, r->scaled);
    put_char(STDOUT, '\n');
}

int main(void)
{
    unsigned short cw;
    struct sse_value r;

    __asm__ volatile("fnstcw %0" : "=m"(cw));
    put_str(STDOUT, "x87 control word ");
    put_hexn(STDOUT, cw, 4);
    put_str(STDOUT, "\nsse mxcsr ");
    put_hexn(STDOUT, sse_mxcsr(), 4);
    put_char(STDOUT, '\n');

    show_ext("harmonic(1000)", harmonic(1000), 1e8L, "*1e8");
    show_ext("sqrt(2)", x87_sqrt(2.0L), 1e9L, "*1e9");

    sse_basel(1000, &r);
    show_double("basel(1000)", &r, "*1e6");
    sse_sqrt(3, &r);
    show_double("sqrt(3)", &r, "*1e9");
    return 17;
}
