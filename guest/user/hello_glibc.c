/* Statically linked against glibc: stdio, malloc, string and libm. Exit status 3. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    const char *greeting = "hello from glibc";
    int n = 10;
    int *squares = malloc(n * sizeof *squares);
    long sum = 0;
    volatile double two = 2.0, three = 3.0, four = 4.0;  /* computed at run time, by libm */

    if (!squares) {
        fprintf(stderr, "hello_glibc: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++)
        squares[i] = i * i;
    for (int i = 0; i < n; i++)
        sum += squares[i];
    free(squares);

    printf("%s\n", greeting);
    printf("strlen %zu\n", strlen(greeting));
    printf("sum of squares below %d: %ld\n", n, sum);
    printf("sqrt(2) %.6f\n", sqrt(two));
    printf("hypot(3, 4) %.1f\n", hypot(three, four));
    fprintf(stderr, "hello_glibc: exiting with 3\n");
    return 3;
}
