/*
 * The ways into the kernel: the system call (int 0x80) and the timer interrupt (IRQ 0).
 *
 * On entry the stack holds what an i386 pushes on an interrupt: EIP, CS, EFLAGS and, from
 * user mode, ESP and SS. unicorn never delivers an interrupt through the IDT, so the
 * runtime pushes that frame itself and enters ring 0 through a call gate (the *_gate stubs
 * below drop the call gate's own four words). See docs/kernel.md.
 */
#define __ASSEMBLY__
#include <asm/ptrace.h>
#include <linux/linkage.h>
#include <linux/errno.h>
#include <linux/sched.h>
#include <asm/unistd.h>

#define __KERNEL_DS 0x68

#define SAVE_ALL \
	cld; \
	pushl %es; \
	pushl %ds; \
	pushl %eax; \
	pushl %ebp; \
	pushl %edi; \
	pushl %esi; \
	pushl %edx; \
	pushl %ecx; \
	pushl %ebx; \
	movl $(__KERNEL_DS), %edx; \
	movl %edx, %ds; \
	movl %edx, %es;

#define RESTORE_ALL \
	popl %ebx; \
	popl %ecx; \
	popl %edx; \
	popl %esi; \
	popl %edi; \
	popl %ebp; \
	popl %eax; \
	popl %ds; \
	popl %es; \
	addl $4, %esp; \
	iret;

	.text

ENTRY(system_call)
	pushl %eax			# orig_eax
	SAVE_ALL
	cmpl $(NR_syscalls), %eax
	jae badsys
	call *sys_call_table(, %eax, 4)
	movl %eax, EAX(%esp)
ENTRY(ret_from_sys_call)
	RESTORE_ALL

badsys:
	call sys_ni_syscall		# numbers past the table: the host answers (and counts) them
	movl %eax, EAX(%esp)
	jmp ret_from_sys_call

ENTRY(IRQ0x00_interrupt)
	pushl $-1			# orig_eax: not a system call
	SAVE_ALL
	movl %esp, %eax
	pushl %eax			# regs
	pushl $0			# dev_id
	pushl $0			# irq
	call timer_interrupt
	addl $12, %esp
ENTRY(ret_from_intr)
	testl $3, CS(%esp)
	jz 1f				# back into the kernel: no rescheduling there
	movl current, %eax
	cmpl $0, TSK_NEED_RESCHED(%eax)
	jz 1f
	call schedule
1:	RESTORE_ALL

/*
 * The call-gate landing pads: the gate pushed SS, ESP, CS, EIP of the trampoline above the
 * frame the runtime wrote; drop them, close the gate window, continue at the real entry.
 */
	.section .entry.gate, "ax"
ENTRY(system_call_gate)
	addl $16, %esp
	movl $0, gate_open
	jmp system_call

ENTRY(IRQ0x00_gate)
	addl $16, %esp
	movl $0, gate_open
	jmp IRQ0x00_interrupt

	.data
	.globl gate_open
	.p2align 2
gate_open:				# nonzero while a gate trampoline runs (see runtime/cpu.py)
	.long 0

	.section .note.GNU-stack, "", @progbits
