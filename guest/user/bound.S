/* BOUND with an index inside [0, 9] (prints a line), then with 10: #BR, which Linux
 * delivers as SIGSEGV, so the process dies before printing the second line.
 * Self-contained: its own _start, raw system calls. */
	.data
	.globl	limits
limits:	.long	0, 9			/* signed lower and upper bound */
ok_msg:	.ascii	"bound: 5 in [0, 9]\n"
	.set	ok_len, . - ok_msg
bad_msg: .ascii	"bound: 10 passed, not reached\n"
	.set	bad_len, . - bad_msg

	.text
	.globl	_start
	.type	_start, @function
_start:
	movl	$5, %eax
	.globl	bound_ok
bound_ok:				/* in range: no fault */
	boundl	%eax, limits
	movl	$4, %eax		/* write(1, ok_msg, ok_len) */
	movl	$1, %ebx
	movl	$ok_msg, %ecx
	movl	$ok_len, %edx
	int	$0x80

	movl	$10, %eax
	.globl	bound_fail
bound_fail:				/* out of range: #BR (vector 5), EIP stays here */
	boundl	%eax, limits
	movl	$4, %eax		/* write(1, bad_msg, bad_len) */
	movl	$1, %ebx
	movl	$bad_msg, %ecx
	movl	$bad_len, %edx
	int	$0x80
	movl	$1, %eax		/* exit(23) */
	movl	$23, %ebx
	int	$0x80
	hlt
	.size	_start, . - _start

	.section .note.GNU-stack, "", @progbits
