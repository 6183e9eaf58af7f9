#ifndef _LINUX_KERNEL_H
#define _LINUX_KERNEL_H

#include <linux/linkage.h>
#include <linux/types.h>

asmlinkage int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
