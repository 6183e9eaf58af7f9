/* Prints argc, every argv[i] and the number of environment variables, all taken from the
 * initial stack by start.S. Exit status 19. */
#include "fmt.h"

int main(int argc, char **argv, char **envp)
{
    int envc = 0;

    put_str(STDOUT, "argc ");
    put_dec(STDOUT, argc);
    put_char(STDOUT, '\n');
    for (int i = 0; i < argc; i++) {
        put_str(STDOUT, "argv[");
        put_dec(STDOUT, i);
        put_str(STDOUT, "] ");
        put_str(STDOUT, argv[i]);
        put_char(STDOUT, '\n');
    }
    while (envp[envc])
        envc++;
    put_str(STDOUT, "envc ");
    put_dec(STDOUT, envc);
    put_char(STDOUT, '\n');
    return 19;
}
