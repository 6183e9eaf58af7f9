/* fsops: the file-system system calls a program makes, each result printed.
 *
 * Run in an empty scratch directory: it makes "fsops.d" there, works inside it (write,
 * lseek, read, stat, rename, symlink, listing, fcntl, dup2, access, readlink, umask) and removes
 * it again. Every line is the same wherever it runs (no inode numbers, times or host
 * paths), so its output under dpc run and under qemu-i386 can be compared byte for byte.
 */
#define _FILE_OFFSET_BITS 64 /* readdir64: host directory offsets need not fit 32 bits */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int errors;

static void check(const char *what, int result)
{
	if (result < 0) {
		printf("%s: %s\n", what, strerror(errno));
		errors++;
	} else {
		printf("%s: %d\n", what, result);
	}
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list(const char *dir)
{
	char *names[16];
	int n = 0;
	DIR *d = opendir(dir);
	struct dirent *e;

	if (d == NULL) {
		printf("opendir %s: %s\n", dir, strerror(errno));
		errors++;
		return;
	}
	while ((e = readdir(d)) != NULL && n < 16)
		names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, n, sizeof names[0], by_name);
	printf("list %s:", dir);
	for (int i = 0; i < n; i++) {
		printf(" %s", names[i]);
		free(names[i]);
	}
	printf("\n");
}

static const char *kind(mode_t mode)
{
	return S_ISDIR(mode) ? "directory" : S_ISREG(mode) ? "file" : S_ISLNK(mode) ? "link" : "other";
}

int main(void)
{
	char buf[256], cwd[4096];
	struct stat st;
	int fd;

	printf("umask %03o\n", umask(022));
	check("mkdir fsops.d", mkdir("fsops.d", 0755));
	check("mkdir again", mkdir("fsops.d", 0755));
	check("chdir fsops.d", chdir("fsops.d"));
	if (getcwd(cwd, sizeof cwd) == NULL)
		check("getcwd", -1);
	else
		printf("getcwd ends in /fsops.d: %d\n", strcmp(strrchr(cwd, '/'), "/fsops.d") == 0);

	fd = open("a", O_WRONLY | O_CREAT | O_EXCL, 0644);
	check("open a", fd);
	check("write", write(fd, "hello, file\n", 12));
	check("fcntl F_GETFL accmode", fcntl(fd, F_GETFL) & O_ACCMODE);
	check("fcntl F_SETFD", fcntl(fd, F_SETFD, FD_CLOEXEC));
	check("fcntl F_GETFD", fcntl(fd, F_GETFD));
	check("close", close(fd));
	check("open a O_EXCL", open("a", O_WRONLY | O_CREAT | O_EXCL, 0644));

	fd = open("a", O_RDWR);
	check("open a O_RDWR", fd);
	check("lseek end", lseek(fd, 0, SEEK_END));
	check("lseek 7", lseek(fd, 7, SEEK_SET));
	memset(buf, 0, sizeof buf);
	check("read", read(fd, buf, sizeof buf - 1));
	printf("read text: %s", buf);
	check("dup2 to 9", dup2(fd, 9));
	check("lseek 9 shares the offset", lseek(9, 0, SEEK_CUR));
	check("close 9", close(9));
	check("fstat", fstat(fd, &st));
	printf("fstat: %s size %lld mode %04o\n", kind(st.st_mode), (long long)st.st_size,
	       st.st_mode & 07777);
	check("close", close(fd));

	check("rename a b", rename("a", "b"));
	check("stat a", stat("a", &st));
	check("stat b", stat("b", &st));
	printf("stat b: %s size %lld\n", kind(st.st_mode), (long long)st.st_size);
	check("symlink", symlink("b", "c"));
	check("lstat c", lstat("c", &st));
	printf("lstat c: %s\n", kind(st.st_mode));
	memset(buf, 0, sizeof buf);
	check("readlink c", readlink("c", buf, sizeof buf));
	printf("readlink c: %s\n", buf);
	check("access b W_OK", access("b", W_OK));
	check("access missing", access("missing", F_OK));
	check("mkdir sub", mkdir("sub", 0700));
	check("stat sub", stat("sub", &st));
	printf("stat sub: %s mode %04o\n", kind(st.st_mode), st.st_mode & 07777);
	list(".");
	check("rmdir . (not empty)", rmdir("../fsops.d"));
	check("unlink sub", unlink("sub"));
	check("rmdir sub", rmdir("sub"));
	check("unlink b", unlink("b"));
	check("unlink c", unlink("c"));
	check("open missing", open("missing", O_RDONLY));
	check("chdir ..", chdir(".."));
	list("fsops.d");
	check("rmdir fsops.d", rmdir("fsops.d"));
	printf("errors %d\n", errors);
	return 0;
}
