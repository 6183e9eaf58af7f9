/* The heap and mappings. The kernel keeps the break (current->mm); the host keeps the page
   tables and the mappings, so it maps and unmaps the pages and does mmap itself. */
#include <asm/hypercall.h>
#include <linux/sched.h>

#define PAGE_SIZE 4096UL
#define PAGE_ALIGN(addr) (((addr) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
#define TASK_SIZE 0xC0000000UL

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

/* Linux's answer to a break it cannot set is the old break. */
asmlinkage unsigned long sys_brk(unsigned long brk)
{
	struct mm_struct *mm = current->mm;
	unsigned long newbrk, oldbrk;

	if (brk < mm->start_brk || brk > TASK_SIZE)
		return mm->brk;
	newbrk = PAGE_ALIGN(brk);
	oldbrk = PAGE_ALIGN(mm->brk);
	if (newbrk < oldbrk)
		hypercall(HC_UNMAP, newbrk, oldbrk, 0, 0);
	else if (newbrk > oldbrk && hypercall(HC_MAP_HEAP, oldbrk, newbrk, 0, 0) != 0)
		return mm->brk;
	mm->brk = brk;
	return brk;
}
