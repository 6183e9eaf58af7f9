/*
 * sys_call_table: the system call number in EAX picks the entry system_call calls. Calls the
 * kernel implements in C are named; every other number is sys_ni_syscall, which asks the
 * host to run it (HC_SYSCALL) on the saved pt_regs.
 */
#include <asm/unistd.h>
#include <linux/linkage.h>

typedef long (asmlinkage *syscall_fn)(void);

/* The range initialiser below is overridden entry by entry, on purpose. */
#pragma GCC diagnostic ignored "-Woverride-init"

#define SYSCALL(name) asmlinkage long name(void)
SYSCALL(sys_ni_syscall);
SYSCALL(sys_exit);
SYSCALL(sys_fork);
SYSCALL(sys_read);
SYSCALL(sys_write);
SYSCALL(sys_open);
SYSCALL(sys_close);
SYSCALL(sys_time);
SYSCALL(sys_getpid);
SYSCALL(sys_brk);
SYSCALL(sys_gettimeofday);
SYSCALL(sys_mmap2);
SYSCALL(sys_init_module);
SYSCALL(sys_delete_module);
SYSCALL(sys_vfork);
SYSCALL(sys_clone);
SYSCALL(sys_exit_group);

const syscall_fn sys_call_table[NR_syscalls] = {
	[0 ... NR_syscalls - 1] = sys_ni_syscall,
	[__NR_exit] = sys_exit,
	[__NR_fork] = sys_fork,
	[__NR_read] = sys_read,
	[__NR_write] = sys_write,
	[__NR_open] = sys_open,
	[__NR_close] = sys_close,
	[__NR_time] = sys_time,
	[__NR_getpid] = sys_getpid,
	[__NR_brk] = sys_brk,
	[__NR_gettimeofday] = sys_gettimeofday,
	[__NR_clone] = sys_clone,
	[__NR_init_module] = sys_init_module,
	[__NR_delete_module] = sys_delete_module,
	[__NR_vfork] = sys_vfork,
	[__NR_mmap2] = sys_mmap2,
	[__NR_exit_group] = sys_exit_group,
};
