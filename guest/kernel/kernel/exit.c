/* Process exit: the task becomes a zombie and the host reaps it. */
#include <asm/hypercall.h>
#include <linux/sched.h>

void do_exit(long code)
{
	current->state = TASK_ZOMBIE;
	current->exit_code = code;
	hypercall(HC_EXIT, code, 0, 0, 0);
	for (;;) /* the host never puts an exited task back on the CPU */
		schedule();
}

asmlinkage long sys_exit(int error_code)
{
	do_exit(error_code & 0xff);
}

asmlinkage long sys_exit_group(int error_code)
{
	do_exit(error_code & 0xff);
}
