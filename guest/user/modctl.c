/* modctl: load and unload guest kernel modules through the init_module and delete_module
 * system calls, in the order given:  modctl load FILE [P=V,...] | unload NAME ...
 * Prints each call's result (0 or -errno); the exit status is the number that failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static char *read_file(const char *path, long *len)
{
	FILE *f = fopen(path, "rb");
	char *data = NULL;
	long n = 0;

	if (f) {
		fseek(f, 0, SEEK_END);
		n = ftell(f);
		rewind(f);
		data = malloc(n ? n : 1);
		if (data && fread(data, 1, n, f) != (size_t)n) {
			free(data);
			data = NULL;
		}
		fclose(f);
	}
	*len = n;
	return data;
}

int main(int argc, char **argv)
{
	int failed = 0;

	for (int i = 1; i < argc; i++) {
		long result;

		if (!strcmp(argv[i], "load") && i + 1 < argc) {
			const char *path = argv[++i];
			const char *params = i + 1 < argc && strchr(argv[i + 1], '=') ? argv[++i] : NULL;
			long len;
			char *image = read_file(path, &len);

			if (!image) {
				fprintf(stderr, "modctl: %s: %s\n", path, strerror(errno));
				return 100;
			}
			result = syscall(SYS_init_module, path, image, len, params);
			free(image);
			printf("init_module(%s) = %ld\n", path, result < 0 ? -(long)errno : result);
		} else if (!strcmp(argv[i], "unload") && i + 1 < argc) {
			result = syscall(SYS_delete_module, argv[++i]);
			printf("delete_module(%s) = %ld\n", argv[i], result < 0 ? -(long)errno : result);
		} else {
			fprintf(stderr, "usage: modctl load FILE [P=V,...] | unload NAME ...\n");
			return 100;
		}
		failed += result != 0;
		fflush(stdout);
	}
	return failed;
}
