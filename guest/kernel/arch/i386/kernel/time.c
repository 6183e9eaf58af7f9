/* The timer interrupt (IRQ 0): entered from IRQ0x00_interrupt every tick. */
#include <linux/sched.h>

void do_timer(struct pt_regs *regs);

void timer_interrupt(int irq, void *dev_id, struct pt_regs *regs)
{
	(void)irq, (void)dev_id;
	do_timer(regs);
}
