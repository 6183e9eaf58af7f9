/* String handling with home-made helpers on argv[1..] (or a built-in list when there are
 * no arguments). Exit status 11. */
#include "fmt.h"

__attribute__((noipa)) unsigned str_len(const char *s)
{
    const char *p = s;
    while (*p)
        p++;
    return (unsigned)(p - s);
}

__attribute__((noipa)) void *mem_copy(void *dst, const void *src, unsigned n)
{
    char *d = dst;
    const char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

/* In place. */
__attribute__((noipa)) void str_reverse(char *s)
{
    unsigned n = str_len(s);
    for (unsigned i = 0; i < n / 2; i++) {
        char t = s[i];
        s[i] = s[n - 1 - i];
        s[n - 1 - i] = t;
    }
}

/* In place, ASCII only. */
__attribute__((noipa)) void str_upper(char *s)
{
    for (; *s; s++)
        if (*s >= 'a' && *s <= 'z')
            *s = (char)(*s - 'a' + 'A');
}

/* Index of the first occurrence of needle in hay, or -1. */
__attribute__((noipa)) int str_find(const char *hay, const char *needle)
{
    unsigned n = str_len(hay), m = str_len(needle);
    for (unsigned i = 0; i + m <= n; i++) {
        unsigned j = 0;
        while (j < m && hay[i + j] == needle[j])
            j++;
        if (j == m)
            return (int)i;
    }
    return -1;
}

static char *const builtin[] = { "Dynamic Probes", "kernel probe", "hello" };

static void show(const char *s)
{
    char buf[128];
    unsigned n = str_len(s);

    if (n >= sizeof buf) {
        put_str(STDERR, "strings: argument too long\n");
        return;
    }
    put_str(STDOUT, "input   \"");
    put_str(STDOUT, s);
    put_str(STDOUT, "\"\nlength  ");
    put_udec(STDOUT, n);

    mem_copy(buf, s, n + 1);
    str_reverse(buf);
    put_str(STDOUT, "\nreverse \"");
    put_str(STDOUT, buf);

    mem_copy(buf, s, n + 1);
    str_upper(buf);
    put_str(STDOUT, "\"\nupper   \"");
    put_str(STDOUT, buf);

    int at = str_find(s, "robe");
    put_str(STDOUT, "\"\nfind    ");
    put_dec(STDOUT, at);
    put_char(STDOUT, '\n');
    if (at < 0) {
        put_str(STDERR, "strings: \"robe\" not in \"");
        put_str(STDERR, s);
        put_str(STDERR, "\"\n");
    }
}

int main(int argc, char **argv)
{
    char *const *list = argc > 1 ? argv + 1 : builtin;
    int count = argc > 1 ? argc - 1 : 3;

    for (int i = 0; i < count; i++)
        show(list[i]);
    return 11;
}
