#ifndef _LINUX_ERRNO_H
#define _LINUX_ERRNO_H

#define EFAULT 14
#define EINVAL 22
#define ENOSYS 38

#endif
