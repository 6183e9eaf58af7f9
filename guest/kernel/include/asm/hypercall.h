/* Generated from runtime/hypercalls.py by `python -m dprobes.runtime.hypercalls
   --header`: do not edit. The guest side of the hypercall interface. */
#ifndef _ASM_HYPERCALL_H
#define _ASM_HYPERCALL_H

#define HC_INTERFACE_VERSION 4
#define HC_VECTOR 0x82

/* HC_VERSION(): the interface version (VERSION) */
#define HC_VERSION 0
/* HC_SYSCALL(regs): run the host's system call orig_eax on the pt_regs at regs; the value for eax */
#define HC_SYSCALL 1
/* HC_WRITE(fd, kbuf, count): write count bytes at kbuf to fd; count or -errno */
#define HC_WRITE 2
/* HC_READ(fd, kbuf, count): one read of at most count bytes of fd into kbuf */
#define HC_READ 3
/* HC_CLOCK(tv): store the machine's wall clock as a struct timeval at tv */
#define HC_CLOCK 4
/* HC_EXIT(status): end the current process with exit status (0-255) */
#define HC_EXIT 5
/* HC_SCHEDULE(): give up the CPU: the host scheduler picks who runs next */
#define HC_SCHEDULE 6
/* HC_PRINTK(kbuf, count): append count bytes at kbuf to the kernel log */
#define HC_PRINTK 7
/* HC_MODULE_LOAD(name, image, len, params): place the module object (len bytes at user image, user strings name and params 'p=v,...' or 0) with its kmod probes; its init address, 0 for none, or -errno */
#define HC_MODULE_LOAD 8
/* HC_MODULE_INITED(status): the init of the module just placed returned status: live if 0, else freed; status */
#define HC_MODULE_INITED 9
/* HC_MODULE_UNLOAD(name): the cleanup address of loaded module name (user string), 0 for none, or -errno */
#define HC_MODULE_UNLOAD 10
/* HC_MODULE_FREE(): free the module HC_MODULE_UNLOAD named; 0 */
#define HC_MODULE_FREE 11
/* HC_FORCE_SIG(sig): current takes signal sig for the user-mode fault it entered a trap entry with: Linux's default action (the process ends; no return) */
#define HC_FORCE_SIG 12
/* HC_MAP_HEAP(start, end): map the page-aligned user range [start, end) read-write as current's heap; 0, or -ENOMEM if the machine could never back it or it meets another mapping */
#define HC_MAP_HEAP 13
/* HC_UNMAP(start, end): unmap [start, end) of current's memory; 0 */
#define HC_UNMAP 14

#ifndef __ASSEMBLY__
static inline long hypercall(long nr, long a, long b, long c, long d)
{
	long ret;
	__asm__ __volatile__("int %1"
			     : "=a"(ret)
			     : "i"(HC_VECTOR), "0"(nr), "b"(a), "c"(b), "d"(c), "S"(d)
			     : "memory");
	return ret;
}
#endif

#endif
