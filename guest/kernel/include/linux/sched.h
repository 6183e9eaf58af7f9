/* Processes as the kernel sees them: one task_struct per process, with its kernel stack. */
#ifndef _LINUX_SCHED_H
#define _LINUX_SCHED_H

#include <asm/ptrace.h>
#include <linux/linkage.h>

#define TSK_NEED_RESCHED 12 /* offsetof(struct task_struct, need_resched), for entry.S */

#define TASK_RUNNING 0
#define TASK_ZOMBIE 4

#define TASK_COMM_LEN 16
#define IOBUF_SIZE 8192
#define TASK_UNION_SIZE 16384

#ifndef __ASSEMBLY__

/* What a context switch saves of the kernel's own registers (the user ones are in regs). */
struct thread_struct {
	unsigned long esp0; /* top of the kernel stack */
	unsigned long eip;
	unsigned long esp;
	unsigned long cr2, trap_no, error_code; /* the last fault: address, vector, error code */
};

/* A process's memory as the kernel keeps it: the heap's start and its break (the host keeps
   the page tables and the other mappings). */
struct mm_struct {
	unsigned long start_brk, brk;
};

/* The runtime fills pid, uid, comm, mm and the list when it creates a process; the layout is read
   from this image's DWARF, so this struct is the one definition of it. */
struct task_struct {
	volatile long state;
	unsigned long flags;
	int sigpending;
	volatile long need_resched;
	int pid;
	unsigned int uid;
	char comm[TASK_COMM_LEN];
	struct pt_regs *regs; /* the user registers saved at the last kernel entry */
	struct mm_struct *mm; /* &own_mm: no two processes share an address space here */
	struct mm_struct own_mm;
	int exit_code;
	struct thread_struct thread;
	struct task_struct *next_task, *prev_task;
	char iobuf[IOBUF_SIZE]; /* read/write bounce buffer */
};

/* The task_struct at the bottom, its kernel stack growing down from the top. */
union task_union {
	struct task_struct task;
	unsigned long stack[TASK_UNION_SIZE / sizeof(long)];
};

extern struct task_struct *current;

extern union task_union init_task_union;

asmlinkage void schedule(void);
void do_exit(long code) __attribute__((noreturn));
long host_syscall(void);
void force_sig(int sig, struct task_struct *p);

/* The user registers of the current system call: at the top of its kernel stack. */
static inline struct pt_regs *current_regs(void)
{
	return (struct pt_regs *)((char *)current + TASK_UNION_SIZE) - 1;
}
#endif

#endif
