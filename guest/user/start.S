/* Process entry for the freestanding guest programs: exit(main(argc, argv, envp)).
 * The kernel leaves argc at (%esp), then argv[], NULL, envp[], NULL. */
	.text
	.globl	_start
	.type	_start, @function
_start:
	xorl	%ebp, %ebp		/* outermost frame for debuggers */
	movl	(%esp), %eax		/* argc */
	leal	4(%esp), %ecx		/* argv */
	leal	8(%esp,%eax,4), %edx	/* envp = argv + argc + 1 */
	andl	$-16, %esp		/* i386 SysV ABI: 16-byte aligned at the call */
	subl	$4, %esp
	pushl	%edx
	pushl	%ecx
	pushl	%eax
	call	main
	movl	%eax, %ebx		/* exit status */
	movl	$1, %eax		/* SYS_exit */
	int	$0x80
	hlt
	.size	_start, . - _start

	.section .note.GNU-stack, "", @progbits
