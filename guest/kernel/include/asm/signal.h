/* The signals the trap handlers send (Linux i386 numbers). */
#ifndef _ASM_SIGNAL_H
#define _ASM_SIGNAL_H

#define SIGFPE 8
#define SIGSEGV 11

#endif
