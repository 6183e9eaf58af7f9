/* printk: format a message and append it to the kernel log the host keeps. */
#include <asm/hypercall.h>
#include <linux/kernel.h>
#include <stdarg.h>

#define LOG_LINE_MAX 256

static char *put_number(char *out, char *end, unsigned long value, unsigned base, int negative)
{
	char digits[12];
	int n = 0;

	do {
		digits[n++] = "0123456789abcdef"[value % base];
		value /= base;
	} while (value);
	if (negative && out < end)
		*out++ = '-';
	while (n && out < end)
		*out++ = digits[--n];
	return out;
}

/* %s %c %d %u %x %p (with or without l) and %%; anything else is copied as it stands. */
static int vscnprintf(char *buf, int size, const char *fmt, va_list args)
{
	char *out = buf, *end = buf + size;

	for (; *fmt && out < end; fmt++) {
		if (*fmt != '%' || !fmt[1]) {
			*out++ = *fmt;
			continue;
		}
		if (fmt[1] == 'l')
			fmt++; /* long is int on i386: %lu %ld %lx as %u %d %x */
		switch (*++fmt) {
		case 's': {
			const char *s = va_arg(args, const char *);
			while (s && *s && out < end)
				*out++ = *s++;
			break;
		}
		case 'c':
			*out++ = (char)va_arg(args, int);
			break;
		case 'd': {
			long v = va_arg(args, int);
			out = put_number(out, end, v < 0 ? -(unsigned long)v : (unsigned long)v, 10,
					 v < 0);
			break;
		}
		case 'u':
			out = put_number(out, end, va_arg(args, unsigned int), 10, 0);
			break;
		case 'x':
		case 'p':
			out = put_number(out, end, va_arg(args, unsigned int), 16, 0);
			break;
		default:
			*out++ = *fmt;
		}
	}
	return out - buf;
}

asmlinkage int printk(const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list args;
	int n;

	va_start(args, fmt);
	n = vscnprintf(line, sizeof(line), fmt, args);
	va_end(args);
	hypercall(HC_PRINTK, (long)line, n, 0, 0);
	return n;
}
