/* hello: a kernel module that greets from init_module with printk, records the jiffies
 * value it was loaded at, and exports hello_greet and hello_calls to other modules. */
#include "module.h"

unsigned long hello_loaded_at;
int hello_calls;
static const char *const moods[] = {"quiet", "cheerful", "busy", "sleepy"};

/* A switch that becomes a jump table in .rodata (R_386_32 relocations into .text). */
__attribute__((noipa)) static int weight(int n)
{
	switch (n & 7) {
	case 0: return 3;
	case 1: return 17;
	case 2: return 5;
	case 3: return 11;
	case 4: return 2;
	case 5: return 13;
	default: return 7;
	}
}

__attribute__((noipa)) int hello_greet(const char *who)
{
	hello_calls++;
	return printk("hello: %s, you are %s (weight %d)\n", who, moods[hello_calls & 3],
		      weight(hello_calls));
}
EXPORT_SYMBOL(hello_greet);
EXPORT_SYMBOL(hello_calls);

static int hello_init(void)
{
	hello_loaded_at = jiffies;
	hello_greet("kernel");
	printk("hello: loaded at jiffies %lu\n", hello_loaded_at);
	return 0;
}

static void hello_exit(void)
{
	printk("hello: unloaded after %lu jiffies, %d greetings\n", jiffies - hello_loaded_at,
	       hello_calls);
}

module_init(hello_init);
module_exit(hello_exit);
