/* The i386 system call numbers this kernel names (the rest go to the host by number). */
#ifndef _ASM_UNISTD_H
#define _ASM_UNISTD_H

#define __NR_exit 1
#define __NR_fork 2
#define __NR_read 3
#define __NR_write 4
#define __NR_open 5
#define __NR_close 6
#define __NR_time 13
#define __NR_getpid 20
#define __NR_brk 45
#define __NR_gettimeofday 78
#define __NR_clone 120
#define __NR_init_module 128
#define __NR_delete_module 129
#define __NR_vfork 190
#define __NR_mmap2 192
#define __NR_exit_group 252

#define NR_syscalls 451 /* one past the last i386 number the host knows */

#endif
