/*
 * The ways into the kernel: the system call (int 0x80), the timer interrupt (IRQ 0) and the
 * trap entries of the user-mode faults that end in a signal (#DE, #BR, #PF).
 *
 * On entry the stack holds what an i386 pushes on an interrupt: EIP, CS, EFLAGS and, from
 * user mode, ESP and SS (below them the error code of a page fault). unicorn never delivers an interrupt through the IDT, so the
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
 * Trap entries: the C handler is called as handler(regs, error_code) on a pt_regs frame whose
 * orig_eax is -1. The stubs push the error code (the CPU pushed it for a page fault) and the
 * handler's address, which error_code keeps in the frame's es slot until es is saved.
 */
ENTRY(divide_error)
	pushl $0			# no error code
	pushl $do_divide_error
	jmp error_code

ENTRY(bounds)
	pushl $0
	pushl $do_bounds
	jmp error_code

ENTRY(page_fault)
	pushl $do_page_fault
	jmp error_code

error_code:
	pushl %ds
	pushl %eax
	pushl %ebp
	pushl %edi
	pushl %esi
	pushl %edx
	pushl %ecx
	pushl %ebx
	cld
	movl ES(%esp), %edi		# the handler
	movl ORIG_EAX(%esp), %edx	# the error code
	movl $-1, ORIG_EAX(%esp)
	movl %es, %ecx
	movl %ecx, ES(%esp)
	movl $(__KERNEL_DS), %ecx
	movl %ecx, %ds
	movl %ecx, %es
	movl %esp, %eax
	pushl %edx			# error_code
	pushl %eax			# regs
	call *%edi
	addl $8, %esp
	jmp ret_from_intr

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

ENTRY(divide_error_gate)
	addl $16, %esp
	movl $0, gate_open
	jmp divide_error

ENTRY(bounds_gate)
	addl $16, %esp
	movl $0, gate_open
	jmp bounds

ENTRY(page_fault_gate)
	addl $16, %esp
	movl $0, gate_open
	jmp page_fault

	.data
	.globl gate_open
	.p2align 2
gate_open:				# nonzero while a gate trampoline runs (see runtime/cpu.py)
	.long 0

	.section .note.GNU-stack, "", @progbits
