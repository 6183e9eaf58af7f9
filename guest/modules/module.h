/* The module interface of the guest kernel, as a Linux 2.4 module saw it (<linux/module.h>,
 * <linux/kernel.h>, <linux/sched.h>): the entry points insmod looks for, the kernel symbols
 * a module may call, exported symbols and module parameters. A module is a relocatable
 * object (gcc -m32 -ffreestanding -fno-pic -c); the loader resolves its undefined symbols
 * against the kernel's symbol table and the symbols other modules export. */
#ifndef GUEST_MODULE_H
#define GUEST_MODULE_H

/* kernel/printk.c and kernel/timer.c */
extern int printk(const char *fmt, ...);
extern volatile unsigned long jiffies;

#define EINVAL 22
#define ENODEV 19

/* insmod calls init_module after placing the module (non-zero: the load fails and the
 * module is freed) and rmmod calls cleanup_module; module_init/module_exit name them. */
#define module_init(fn) int init_module(void) __attribute__((alias(#fn)))
#define module_exit(fn) void cleanup_module(void) __attribute__((alias(#fn)))

/* 2.4's struct module_symbol: one per exported symbol, in section __ksymtab, with the
 * name in .kstrtab; the loader reads the table after relocating it. */
struct module_symbol {
	unsigned long value;
	const char *name;
};
#define EXPORT_SYMBOL(sym)                                                               \
	static const char __kstrtab_##sym[] __attribute__((section(".kstrtab"))) = #sym; \
	static const struct module_symbol __ksymtab_##sym                              \
		__attribute__((section("__ksymtab"), used)) = {(unsigned long)&sym,     \
							       __kstrtab_##sym}

/* 2.4's MODULE_PARM(var, "i"): "parm_<var>=i" in .modinfo tells insmod that var=N on
 * its command line sets the int variable var before init_module runs. */
#define MODULE_PARM(var, type)                                                           \
	static const char __module_parm_##var[] __attribute__((section(".modinfo"), used)) = \
		"parm_" #var "=" type

#endif
