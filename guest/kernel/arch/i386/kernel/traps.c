/* The C side of the trap entries in entry.S: user-mode faults that end in a signal. The
   runtime enters them only for faults from user mode (docs/kernel.md): int3 and the debug
   trap belong to the probe machinery on the host, a ring-0 fault to the exception table. */
#include <asm/ptrace.h>
#include <asm/signal.h>
#include <linux/sched.h>

static void do_trap(int trapnr, int signr, struct pt_regs *regs, long error_code)
{
	(void)regs;
	current->thread.error_code = error_code;
	current->thread.trap_no = trapnr;
	force_sig(signr, current);
}

asmlinkage void do_divide_error(struct pt_regs *regs, long error_code)
{
	do_trap(0, SIGFPE, regs, error_code);
}

asmlinkage void do_bounds(struct pt_regs *regs, long error_code)
{
	do_trap(5, SIGSEGV, regs, error_code);
}
