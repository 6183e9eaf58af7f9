/* Self-modifying code: makes its own text writable with mprotect and rewrites instructions
 * that have already run, as a JIT or a hot-patcher does. argv[1] picks the mode:
 *   plain  no rewrite: first(3) and answer() return 4, their original code;
 *   once   rewrite first's first byte (nop -> ret) and answer's immediate (4 -> 3) once;
 *   hot    rewrite both 1000 times in a loop, calling them after each rewrite, and turn
 *          bump's first instruction into a prefix and back (same length, not the same
 *          number of instructions);
 *   next   patch_next(v) stores v into the immediate of the instruction right after the
 *          store, the very next one to run, 100 times.
 * Before and after the rewrites it calls neighbour(), which is never rewritten but lies
 * in the same page. It prints what each call returned and exits 3 when every call ran the
 * bytes in memory at the time, 4 when one ran stale code, 5 on an mprotect failure. */
#include "fmt.h"

#define SYS_mprotect 125
#define PROT_RWX 7
#define PAGE 4096u
#define HOT_ROUNDS 1000
#define NEXT_ROUNDS 100
#define NOP 0x90
#define RET 0xc3
#define INC_EAX 0x40
#define OPERAND_SIZE 0x66

/* The code that gets rewritten, in asm so its bytes are known:
 *   first (regparm 1, x in eax): nop; mov $4,%eax; ret   -> 4, or x once nop is a ret
 *   answer:                      mov $4,%eax; ret        -> its immediate (answer+1)
 *   patch_next (v on the stack): stores v's low byte into the immediate of label 1, then
 *                                runs that instruction   -> v & 0xff
 *   neighbour (regparm 1):       lea 1(%eax),%eax; ret   -> x + 1
 *   bump (regparm 1):            inc %eax; inc %eax; ret -> x + 2, or x + 1 once the first
 *                                byte is 0x66 (one instruction: inc %ax) */
__asm__(".text\n"
        ".p2align 4\n"
        ".globl smc_code_start\n"
        "smc_code_start:\n"
        ".globl first\n.type first, @function\n"
        "first:\n"
        "    nop\n"
        "    movl $4, %eax\n"
        "    ret\n"
        ".size first, . - first\n"
        ".globl answer\n.type answer, @function\n"
        "answer:\n"
        "    movl $4, %eax\n"
        "    ret\n"
        ".size answer, . - answer\n"
        ".globl patch_next\n.type patch_next, @function\n"
        "patch_next:\n"
        "    movl 4(%esp), %ecx\n"
        "    movb %cl, 1f + 1\n"
        "1:  movl $4, %eax\n"
        "    ret\n"
        ".size patch_next, . - patch_next\n"
        ".globl neighbour\n.type neighbour, @function\n"
        "neighbour:\n"
        "    leal 1(%eax), %eax\n"
        "    ret\n"
        ".size neighbour, . - neighbour\n"
        ".globl bump\n.type bump, @function\n"
        "bump:\n"
        "    incl %eax\n"
        "    incl %eax\n"
        "    ret\n"
        ".size bump, . - bump\n"
        ".globl smc_code_end\n"
        "smc_code_end:\n");

extern unsigned char smc_code_start[], smc_code_end[];
__attribute__((regparm(1))) int first_fn(int x) __asm__("first");
int answer_fn(void) __asm__("answer");
int patch_next(int v);
__attribute__((regparm(1))) int neighbour(int x);
__attribute__((regparm(1))) int bump(int x);

static int stale;

static void expect(const char *what, int got, int want)
{
    put_str(STDOUT, what);
    put_char(STDOUT, ' ');
    put_dec(STDOUT, got);
    put_char(STDOUT, '\n');
    if (got != want) {
        stale++;
        put_str(STDERR, "smc: stale code in ");
        put_str(STDERR, what);
        put_char(STDERR, '\n');
    }
}

/* Writes through a volatile pointer: the compiler must not fold or drop the store. */
static void poke(unsigned char *at, unsigned char value)
{
    *(volatile unsigned char *)at = value;
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static int make_writable(void)
{
    unsigned start = (unsigned)smc_code_start & ~(PAGE - 1);
    unsigned end = ((unsigned)smc_code_end + PAGE - 1) & ~(PAGE - 1);
    return sys_call3(SYS_mprotect, (long)start, (long)(end - start), PROT_RWX) == 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "plain";
    int plain = streq(mode, "plain");

    if (!plain && !streq(mode, "once") && !streq(mode, "hot") && !streq(mode, "next")) {
        put_str(STDERR, "usage: smc [plain|once|hot|next]\n");
        return 2;
    }
    if (!plain && !make_writable()) {
        put_str(STDERR, "smc: mprotect failed\n");
        return 5;
    }
    expect("neighbour(1)", neighbour(1), 2); /* run once while writable, before any write */
    expect("first(3)", first_fn(3), 4);
    expect("answer()", answer_fn(), 4);
    if (streq(mode, "once")) {
        poke((unsigned char *)first_fn, RET);
        poke((unsigned char *)answer_fn + 1, 3);
        expect("first(3)", first_fn(3), 3);
        expect("answer()", answer_fn(), 3);
    } else if (streq(mode, "hot")) {
        int before = stale;
        for (int i = 0; i < HOT_ROUNDS; i++) {
            int value = 1 + i % 200;
            poke((unsigned char *)answer_fn + 1, (unsigned char)value);
            poke((unsigned char *)first_fn, i & 1 ? NOP : RET);
            stale += answer_fn() != value;
            stale += first_fn(value) != (i & 1 ? 4 : value);
            poke((unsigned char *)bump, i & 1 ? INC_EAX : OPERAND_SIZE);
            stale += bump(value) != value + (i & 1 ? 2 : 1);
        }
        put_str(STDOUT, "hot rounds ");
        put_dec(STDOUT, HOT_ROUNDS);
        put_str(STDOUT, " stale ");
        put_dec(STDOUT, stale - before);
        put_char(STDOUT, '\n');
    } else if (streq(mode, "next")) {
        int before = stale;
        for (int i = 0; i < NEXT_ROUNDS; i++)
            stale += patch_next(5 + i) != 5 + i;
        put_str(STDOUT, "next rounds ");
        put_dec(STDOUT, NEXT_ROUNDS);
        put_str(STDOUT, " stale ");
        put_dec(STDOUT, stale - before);
        put_char(STDOUT, '\n');
    }
    expect("neighbour(2)", neighbour(2), 3);
    return stale ? 4 : 3;
}
