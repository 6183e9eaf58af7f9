/* A standard-input filter for pipelines: copies stdin to stdout, upper-casing ASCII letters
 * with the argument "upper" and putting each line's number and a tab in front of it with
 * "number". It reads in 64-byte pieces, so a pipeline's bytes take many reads. Exit status
 * 0 at end of file, 1 when a read fails, 2 when a write fails. */
#include "fmt.h"

#define SYS_read 3
#define STDIN 0
#define CHUNK 64

static long sys_read(int fd, void *buf, unsigned long len)
{
    return sys_call3(SYS_read, fd, (long)buf, (long)len);
}

__attribute__((noipa)) static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

int main(int argc, char **argv)
{
    int upper = argc > 1 && same(argv[1], "upper");
    int number = argc > 1 && same(argv[1], "number");
    unsigned line = 0;
    int line_start = 1;
    char in[CHUNK];

    for (;;) {
        long n = sys_read(STDIN, in, sizeof in);
        if (n == 0)
            return 0;
        if (n < 0)
            return 1;
        for (long i = 0; i < n; i++) {
            char c = in[i];
            if (number && line_start)
                put_udec(STDOUT, ++line), put_char(STDOUT, '\t');
            if (upper && c >= 'a' && c <= 'z')
                c = (char)(c - 'a' + 'A');
            if (sys_write(STDOUT, &c, 1) != 1)
                return 2;
            line_start = c == '\n';
        }
    }
}
