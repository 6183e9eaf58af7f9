#ifndef _LINUX_LINKAGE_H
#define _LINUX_LINKAGE_H

/* System calls take their arguments from the pt_regs frame on the stack. */
#define asmlinkage __attribute__((regparm(0)))

#define ENTRY(name) \
	.globl name; \
	.type name, @function; \
	.p2align 4; \
	name:

#endif
