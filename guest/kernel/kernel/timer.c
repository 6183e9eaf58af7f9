/* The tick: jiffies counts timer interrupts since the machine started. */
#include <linux/sched.h>

#define QUANTUM_TICKS 10

volatile unsigned long jiffies;

void do_timer(struct pt_regs *regs)
{
	(void)regs;
	jiffies++;
	if (jiffies % QUANTUM_TICKS == 0)
		current->need_resched = 1;
}

asmlinkage long sys_getpid(void)
{
	return current->pid;
}
