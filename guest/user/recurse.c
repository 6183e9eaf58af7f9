/* Recursion with a depth counter: fib(20) and ackermann(2, 3). Exit status 13. */
#include "fmt.h"

int depth;      /* current recursion depth */
int max_depth;  /* deepest depth seen since the last reset */
int ncalls;     /* calls since the last reset */

static void enter(void)
{
    ncalls++;
    if (++depth > max_depth)
        max_depth = depth;
}

static void reset(void)
{
    depth = max_depth = ncalls = 0;
}

__attribute__((noipa)) int fib(int n)
{
    int r;
    enter();
    r = n < 2 ? n : fib(n - 1) + fib(n - 2);
    depth--;
    return r;
}

__attribute__((noipa)) int ackermann(int m, int n)
{
    int r;
    enter();
    if (m == 0)
        r = n + 1;
    else if (n == 0)
        r = ackermann(m - 1, 1);
    else
        r = ackermann(m - 1, ackermann(m, n - 1));
    depth--;
    return r;
}

static void report(const char *what, int value)
{
    put_str(STDOUT, what);
    put_str(STDOUT, " = ");
    put_dec(STDOUT, value);
    put_str(STDOUT, "\n");
    put_str(STDERR, what);
    put_str(STDERR, ": calls ");
    put_dec(STDERR, ncalls);
    put_str(STDERR, ", max depth ");
    put_dec(STDERR, max_depth);
    put_str(STDERR, "\n");
}

int main(void)
{
    int v;

    reset();
    v = fib(20);
    report("fib(20)", v);

    reset();
    v = ackermann(2, 3);
    report("ackermann(2, 3)", v);
    return 13;
}
