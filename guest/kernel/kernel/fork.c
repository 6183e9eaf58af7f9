/* Process creation. The machine has no fork yet: the host answers (-ENOSYS, reported). */
#include <linux/sched.h>

#define SIGCHLD 17

int do_fork(unsigned long clone_flags, unsigned long stack_start, struct pt_regs *regs,
	    unsigned long stack_size)
{
	(void)clone_flags, (void)stack_start, (void)regs, (void)stack_size;
	return host_syscall();
}

asmlinkage int sys_fork(struct pt_regs regs)
{
	return do_fork(SIGCHLD, regs.esp, &regs, 0);
}

asmlinkage int sys_clone(struct pt_regs regs)
{
	return do_fork(regs.ebx, regs.ecx, &regs, 0);
}

asmlinkage int sys_vfork(struct pt_regs regs)
{
	return do_fork(SIGCHLD, regs.esp, &regs, 0);
}
