/* Loading and unloading modules: forwarded to the host for now. */
#include <linux/sched.h>

asmlinkage long sys_init_module(const char *name, void *image)
{
	(void)name, (void)image;
	return host_syscall();
}

asmlinkage long sys_delete_module(const char *name)
{
	(void)name;
	return host_syscall();
}
