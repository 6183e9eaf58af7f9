/*
 * Copies to and from user memory. The address range is checked first (access_ok); a user
 * page that is missing still faults inside the copy, and the runtime then resumes at the
 * fixup that __ex_table pairs with the faulting instruction, so the copy ends early and
 * reports the bytes it did not move (the caller turns that into -EFAULT).
 */
#include <asm/uaccess.h>

#define EX_TABLE_ENTRY(insn, fixup) \
	".section __ex_table, \"a\"\n\t.p2align 2\n\t.long " #insn ", " #fixup "\n\t.previous\n"

static unsigned long __copy_user(void *to, const void *from, unsigned long n)
{
	__asm__ __volatile__("1:\trep movsb\n2:\n" EX_TABLE_ENTRY(1b, 2b)
			     : "+c"(n), "+D"(to), "+S"(from)
			     :
			     : "memory");
	return n;
}

unsigned long copy_to_user(void *to, const void *from, unsigned long n)
{
	return access_ok(to, n) ? __copy_user(to, from, n) : n;
}

unsigned long copy_from_user(void *to, const void *from, unsigned long n)
{
	return access_ok(from, n) ? __copy_user(to, from, n) : n;
}

unsigned long clear_user(void *to, unsigned long n)
{
	if (!access_ok(to, n))
		return n;
	__asm__ __volatile__("1:\trep stosb\n2:\n" EX_TABLE_ENTRY(1b, 2b)
			     : "+c"(n), "+D"(to)
			     : "a"(0)
			     : "memory");
	return n;
}
