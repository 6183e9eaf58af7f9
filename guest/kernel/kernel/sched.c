/* The scheduler's kernel half: `current`, and schedule() handing the CPU back to the host's
   round-robin (the runtime switches address spaces and sets `current`). */
#include <asm/hypercall.h>
#include <linux/sched.h>

_Static_assert(__builtin_offsetof(struct task_struct, need_resched) == TSK_NEED_RESCHED,
	       "entry.S reads need_resched at TSK_NEED_RESCHED");

struct task_struct *current = &init_task_union.task;

asmlinkage void schedule(void)
{
	current->need_resched = 0;
	hypercall(HC_SCHEDULE, 0, 0, 0, 0);
}
