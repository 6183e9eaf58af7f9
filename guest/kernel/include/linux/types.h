#ifndef _LINUX_TYPES_H
#define _LINUX_TYPES_H

typedef unsigned int size_t;
typedef int ssize_t;
typedef long time_t;
typedef long suseconds_t;

#define NULL ((void *)0)

#endif
