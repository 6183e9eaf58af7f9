/* The registers saved on the kernel stack at every entry from user mode or an interrupt. */
#ifndef _ASM_PTRACE_H
#define _ASM_PTRACE_H

/* Offsets of the fields below, for entry.S. */
#define EBX 0x00
#define ECX 0x04
#define EDX 0x08
#define ESI 0x0C
#define EDI 0x10
#define EBP 0x14
#define EAX 0x18
#define DS 0x1C
#define ES 0x20
#define ORIG_EAX 0x24
#define EIP 0x28
#define CS 0x2C
#define EFLAGS 0x30
#define OLDESP 0x34
#define OLDSS 0x38

#ifndef __ASSEMBLY__
/* SAVE_ALL pushes ebx..es; the CPU (here: the runtime) pushed eip..xss. */
struct pt_regs {
	long ebx;
	long ecx;
	long edx;
	long esi;
	long edi;
	long ebp;
	long eax;
	int xds;
	int xes;
	long orig_eax;
	long eip;
	int xcs;
	long eflags;
	long esp;
	int xss;
};

#define user_mode(regs) (3 & (regs)->xcs)
#endif

#endif
