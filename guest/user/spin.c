/* Runs until it is stopped from outside: prints "spinning" once, then calls tick()
 * forever. With the argument "sys" every tick makes a getpid system call (a syscall-heavy
 * run); without, it is a pure busy loop that never leaves user mode. */
#include "fmt.h"

#define SYS_getpid 20

volatile unsigned ticks;  /* incremented by every tick() */

/* noipa: a real function called once per iteration, a place for a probe. */
__attribute__((noipa)) void tick(int syscalls)
{
    ticks++;
    if (syscalls)
        sys_call1(SYS_getpid, 0);
}

int main(int argc, char **argv)
{
    int syscalls = argc > 1 && argv[1][0] == 's' && argv[1][1] == 'y' && argv[1][2] == 's';

    put_str(STDOUT, syscalls ? "spinning with syscalls\n" : "spinning\n");
    for (;;)
        tick(syscalls);
}
