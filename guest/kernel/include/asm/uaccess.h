/* Copies between user and kernel memory that fail cleanly instead of oopsing. */
#ifndef _ASM_UACCESS_H
#define _ASM_UACCESS_H

#include <linux/types.h>

#define TASK_SIZE 0xC0000000UL

/* [addr, addr+size) lies wholly below the kernel. */
static inline int access_ok(const void *addr, unsigned long size)
{
	unsigned long a = (unsigned long)addr;
	return size <= TASK_SIZE && a <= TASK_SIZE - size;
}

/* Both return the number of bytes NOT copied (0 on success), as Linux's do. */
unsigned long copy_to_user(void *to, const void *from, unsigned long n);
unsigned long copy_from_user(void *to, const void *from, unsigned long n);
unsigned long clear_user(void *to, unsigned long n);

#endif
