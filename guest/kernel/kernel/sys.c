/* The system calls this kernel does not implement itself: the host runs them. */
#include <asm/hypercall.h>
#include <linux/sched.h>

/* Run the current system call (number and arguments in the saved user registers) on the
   host; its result is the call's. */
long host_syscall(void)
{
	return hypercall(HC_SYSCALL, (long)current_regs(), 0, 0, 0);
}

asmlinkage long sys_ni_syscall(void)
{
	return host_syscall();
}
