/* Task 0, the one `current` names before the runtime puts a process on the CPU. */
#include <linux/sched.h>

union task_union init_task_union __attribute__((aligned(4096))) = {
	.task = { .state = TASK_RUNNING, .pid = 0, .comm = "swapper" },
};
