/* read and write: the kernel copies the user buffer through the task's bounce buffer; the
   host moves the bytes to or from the file. */
#include <asm/hypercall.h>
#include <asm/uaccess.h>
#include <linux/errno.h>
#include <linux/sched.h>

#define MAX_RW_COUNT (1U << 20) /* one call moves at most this much, as the host's */

/* One host read of at most IOBUF_SIZE bytes: a pipe or terminal never waits for more. */
asmlinkage ssize_t sys_read(unsigned int fd, char *buf, size_t count)
{
	char *kbuf = current->iobuf;
	long got;

	if (!access_ok(buf, count))
		return -EFAULT;
	if (count > IOBUF_SIZE)
		count = IOBUF_SIZE;
	got = hypercall(HC_READ, fd, (long)kbuf, count, 0);
	if (got > 0 && copy_to_user(buf, kbuf, got))
		return -EFAULT;
	return got;
}

asmlinkage ssize_t sys_write(unsigned int fd, const char *buf, size_t count)
{
	char *kbuf = current->iobuf;
	size_t done = 0;

	if (count > MAX_RW_COUNT)
		count = MAX_RW_COUNT;
	if (!access_ok(buf, count))
		return -EFAULT;
	do { /* at least one host call: write(fd, buf, 0) still checks fd */
		size_t chunk = count - done < IOBUF_SIZE ? count - done : IOBUF_SIZE;
		long put;

		if (copy_from_user(kbuf, buf + done, chunk))
			return done ? (ssize_t)done : -EFAULT;
		put = hypercall(HC_WRITE, fd, (long)kbuf, chunk, 0);
		if (put < 0)
			return done ? (ssize_t)done : put;
		done += put;
		if ((size_t)put < chunk)
			break;
	} while (done < count);
	return done;
}
