/* Tiny unbuffered output helpers for the freestanding guest programs: every call is one
 * write(2). Only 32-bit integer arithmetic, so nothing needs libgcc. */
#ifndef GUEST_FMT_H
#define GUEST_FMT_H

#include "sys.h"

static inline unsigned fmt_len(const char *s)
{
    unsigned n = 0;
    while (s[n])
        n++;
    return n;
}

static inline void put_str(int fd, const char *s)
{
    sys_write(fd, s, fmt_len(s));
}

static inline void put_char(int fd, char c)
{
    sys_write(fd, &c, 1);
}

/* Unsigned decimal. */
static inline void put_udec(int fd, unsigned v)
{
    char buf[10];
    int i = sizeof buf;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sys_write(fd, buf + i, sizeof buf - i);
}

/* Signed decimal. */
static inline void put_dec(int fd, int v)
{
    if (v < 0) {
        put_char(fd, '-');
        put_udec(fd, 0u - (unsigned)v);
    } else {
        put_udec(fd, (unsigned)v);
    }
}

/* "0x" and exactly `digits` lower-case hex digits (1..8). */
static inline void put_hexn(int fd, unsigned v, int digits)
{
    char buf[10];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        buf[2 + i] = "0123456789abcdef"[v & 15];
    sys_write(fd, buf, 2 + digits);
}

static inline void put_hex(int fd, unsigned v)
{
    put_hexn(fd, v, 8);
}

/* A 64-bit value given as two halves: "0x" and 16 hex digits. */
static inline void put_hex64(int fd, unsigned hi, unsigned lo)
{
    put_hexn(fd, hi, 8);
    char buf[8];
    for (int i = 7; i >= 0; i--, lo >>= 4)
        buf[i] = "0123456789abcdef"[lo & 15];
    sys_write(fd, buf, 8);
}

#endif
