/* Wall-clock time: the host's clock (the machine's instruction clock), read by hypercall. */
#include <asm/hypercall.h>
#include <asm/uaccess.h>
#include <linux/errno.h>
#include <linux/linkage.h>
#include <linux/time.h>

void do_gettimeofday(struct timeval *tv)
{
	hypercall(HC_CLOCK, (long)tv, 0, 0, 0);
}

asmlinkage long sys_time(int *tloc)
{
	struct timeval now;
	int sec;

	do_gettimeofday(&now);
	sec = now.tv_sec;
	if (tloc && copy_to_user(tloc, &sec, sizeof(sec)))
		return -EFAULT;
	return sec;
}

asmlinkage long sys_gettimeofday(struct timeval *tv, struct timezone *tz)
{
	struct timeval now;

	do_gettimeofday(&now);
	if (tv && copy_to_user(tv, &now, sizeof(now)))
		return -EFAULT;
	if (tz && clear_user(tz, sizeof(*tz)))
		return -EFAULT;
	return 0;
}
