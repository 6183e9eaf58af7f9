/* Loading and unloading modules. The host's loader relocates and places the object and
   plants the module's kmod probes (HC_MODULE_LOAD); the module's init runs here, in ring 0,
   in the context of the calling task, and its status goes back to the loader. Unloading
   runs cleanup here, then the loader frees the module. */
#include <asm/hypercall.h>
#include <linux/errno.h>
#include <linux/sched.h>

typedef int (*module_entry)(void);

static int is_error(long value)
{
	return (unsigned long)value >= (unsigned long)-4095;
}

/* init_module(name, image, len, params): the 2.4 name first, then the object itself. */
asmlinkage long sys_init_module(const char *name, const void *image, unsigned long len,
				const char *params)
{
	long init = hypercall(HC_MODULE_LOAD, (long)name, (long)image, (long)len, (long)params);
	int status = 0;

	if (is_error(init))
		return init;
	if (init)
		status = ((module_entry)init)();
	return hypercall(HC_MODULE_INITED, status, 0, 0, 0);
}

asmlinkage long sys_delete_module(const char *name)
{
	long cleanup = hypercall(HC_MODULE_UNLOAD, (long)name, 0, 0, 0);

	if (is_error(cleanup))
		return cleanup;
	if (cleanup)
		((module_entry)cleanup)();
	return hypercall(HC_MODULE_FREE, 0, 0, 0, 0);
}
