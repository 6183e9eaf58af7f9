/* Page faults that reach the kernel. Demand paging never gets here: the host's TLB fill
   maps every page a mapping covers before the CPU sees a fault, so what arrives is an access
   no mapping allows (a bad area) and ends in SIGSEGV. */
#include <asm/ptrace.h>
#include <asm/signal.h>
#include <linux/sched.h>

asmlinkage void do_page_fault(struct pt_regs *regs, unsigned long error_code)
{
	unsigned long address;

	(void)regs;
	__asm__("movl %%cr2, %0" : "=r"(address));
	current->thread.cr2 = address;
	current->thread.error_code = error_code;
	current->thread.trap_no = 14;
	force_sig(SIGSEGV, current);
}
