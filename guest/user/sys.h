/* Raw i386 Linux system calls (int $0x80) for the freestanding guest programs. */
#ifndef GUEST_SYS_H
#define GUEST_SYS_H

#define SYS_exit 1
#define SYS_write 4

#define STDOUT 1
#define STDERR 2

static inline long sys_call1(long nr, long a)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a) : "memory");
    return ret;
}

static inline long sys_call3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

static inline long sys_write(int fd, const void *buf, unsigned long len)
{
    return sys_call3(SYS_write, fd, (long)buf, (long)len);
}

static inline __attribute__((noreturn)) void sys_exit(int status)
{
    sys_call1(SYS_exit, status);
    __builtin_unreachable();
}

#endif
