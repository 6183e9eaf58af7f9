/* Touches N MiB (argv[1], decimal; default 16) of heap grown with brk: writes one word
 * per 4 KiB page, then reads every page back and prints the pages and a checksum.
 * Exit status 0; 1 when brk cannot grow the heap by N MiB ("bigmem: brk failed"). */
#include "fmt.h"

#define SYS_brk 45
#define PAGE 4096u

static unsigned parse_mib(const char *s)
{
    unsigned v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (unsigned)(*s++ - '0');
    return v;
}

int main(int argc, char **argv)
{
    unsigned mib = argc > 1 ? parse_mib(argv[1]) : 16;
    unsigned size = mib << 20;
    unsigned start = (unsigned)sys_call1(SYS_brk, 0);
    unsigned end = (unsigned)sys_call1(SYS_brk, (long)(start + size));

    if (end != start + size) {
        put_str(STDERR, "bigmem: brk failed\n");
        return 1;
    }
    for (unsigned off = 0; off < size; off += PAGE)
        *(volatile unsigned *)(start + off) = off * 2654435761u + mib;
    unsigned sum = 0;
    for (unsigned off = 0; off < size; off += PAGE)
        sum = (sum << 1 | sum >> 31) ^ *(volatile unsigned *)(start + off);

    put_str(STDOUT, "bigmem ");
    put_udec(STDOUT, mib);
    put_str(STDOUT, " MiB pages ");
    put_udec(STDOUT, size / PAGE);
    put_str(STDOUT, " checksum ");
    put_hex(STDOUT, sum);
    put_char(STDOUT, '\n');
    return 0;
}
