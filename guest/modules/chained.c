/* chained: a kernel module that needs hello's exported symbols (load hello first) and
 * fails to initialise with -ENODEV when loaded with the parameter fail=1. */
#include "module.h"

extern int hello_greet(const char *who);
extern int hello_calls;

int fail; /* global: set by the loader before init, so the compiler may not assume 0 */
MODULE_PARM(fail, "i");
static int greeted;

__attribute__((noipa)) static int chained_check(int asked)
{
	if (asked) {
		printk("chained: asked to fail, init returns %d\n", -ENODEV);
		return -ENODEV;
	}
	return 0;
}

static int chained_init(void)
{
	int status = chained_check(fail);

	if (status)
		return status;
	greeted = hello_greet("chained");
	printk("chained: loaded at jiffies %lu, hello has %d greetings\n", jiffies, hello_calls);
	return 0;
}

static void chained_exit(void)
{
	printk("chained: unloaded (%d bytes greeted)\n", greeted);
}

module_init(chained_init);
module_exit(chained_exit);
