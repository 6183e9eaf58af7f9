/* Signals: nothing in the guest installs handlers, so a forced signal takes Linux's default
   action, which the host carries out (the process ends, with its crash report). */
#include <asm/hypercall.h>
#include <linux/sched.h>

void force_sig(int sig, struct task_struct *p)
{
	(void)p; /* only ever current: a trap handler signals the task that faulted */
	hypercall(HC_FORCE_SIG, sig, 0, 0, 0);
}
