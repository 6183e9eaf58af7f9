/* The heap and mappings: the host keeps the page tables, so it does the work. */
#include <linux/sched.h>

unsigned long do_mmap(unsigned long addr, unsigned long len, unsigned long prot,
		      unsigned long flags, unsigned long fd, unsigned long pgoff)
{
	(void)addr, (void)len, (void)prot, (void)flags, (void)fd, (void)pgoff;
	return host_syscall();
}

asmlinkage unsigned long sys_mmap2(unsigned long addr, unsigned long len, unsigned long prot,
				   unsigned long flags, unsigned long fd, unsigned long pgoff)
{
	return do_mmap(addr, len, prot, flags, fd, pgoff);
}

asmlinkage unsigned long sys_brk(unsigned long brk)
{
	(void)brk;
	return host_syscall();
}
