/* A hot function called many times, and a function with a plain frame-pointer prologue
 * whose stack arguments a probe can read. Exit status 7. */
#include "fmt.h"

#define ITERATIONS 100000

volatile int calls;   /* incremented by every work() call: a write-watchpoint target */
volatile int marker;  /* main writes 1, 2, 3 into it, nothing else touches it */

/* noipa: stays a real, out-of-line function called with its real argument. */
__attribute__((noipa)) int work(int n)
{
    calls++;
    return n * 7 + (n & 15);
}

/* Entry: push %ebp; mov %esp,%ebp.  a, b, c at 4/8/12(%esp) on entry, 8/12/16(%ebp) after. */
__attribute__((noipa)) int add3(int a, int b, int c)
{
    return a + b + c;
}

static const int add3_args[3][3] = { { 1, 2, 3 }, { 10, 20, 30 }, { -5, 100, 7 } };

int main(void)
{
    unsigned sum = 0;

    marker = 1;
    for (int i = 0; i < ITERATIONS; i++)
        sum += (unsigned)work(i);
    marker = 2;

    put_str(STDOUT, "iterations ");
    put_dec(STDOUT, ITERATIONS);
    put_str(STDOUT, "\nchecksum ");
    put_udec(STDOUT, sum);
    put_char(STDOUT, ' ');
    put_hex(STDOUT, sum);
    put_str(STDOUT, "\ncalls ");
    put_dec(STDOUT, calls);
    put_char(STDOUT, '\n');

    for (int k = 0; k < 3; k++) {
        const int *v = add3_args[k];
        put_str(STDOUT, "add3(");
        put_dec(STDOUT, v[0]);
        put_str(STDOUT, ", ");
        put_dec(STDOUT, v[1]);
        put_str(STDOUT, ", ");
        put_dec(STDOUT, v[2]);
        put_str(STDOUT, ") = ");
        put_dec(STDOUT, add3(v[0], v[1], v[2]));
        put_char(STDOUT, '\n');
    }
    marker = 3;

    put_str(STDERR, "loop: done\n");
    return 7;
}
