# The guest kernel image bin/vmlinux (included by ../Makefile, which sets CC, BIN, OBJ, REPRO).
# Each file is compiled from guest/kernel/ so its DWARF compilation unit is named as in Linux
# (kernel/time.c, arch/i386/kernel/time.c, ...).

KSRC := kernel
KOBJ := $(OBJ)/kernel
KERNEL_SOURCES := arch/i386/kernel/entry.S arch/i386/kernel/syscall_table.c \
	arch/i386/kernel/time.c arch/i386/kernel/init_task.c \
	arch/i386/kernel/traps.c arch/i386/mm/fault.c \
	arch/i386/lib/usercopy.c kernel/sched.c kernel/signal.c kernel/fork.c \
	kernel/exit.c kernel/sys.c kernel/time.c kernel/timer.c kernel/module.c kernel/printk.c \
	fs/read_write.c fs/open.c mm/mmap.c
KERNEL_OBJECTS := $(addprefix $(KOBJ)/,$(addsuffix .o,$(basename $(KERNEL_SOURCES))))
KERNEL_HEADERS := $(wildcard $(KSRC)/include/*/*.h)
CFLAGS_KERNEL := -m32 -march=i686 -g -O1 -fno-omit-frame-pointer -fcf-protection=none -fno-pie \
	-ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables -fno-common \
	-Wall -Wextra -nostdinc -isystem $(shell $(CC) -m32 -print-file-name=include) \
	-Iinclude $(REPRO)

$(KOBJ)/%.o: $(KSRC)/%.c $(KERNEL_HEADERS)
	mkdir -p $(dir $@)
	cd $(KSRC) && $(CC) $(CFLAGS_KERNEL) -c $*.c -o $(abspath $@)

$(KOBJ)/%.o: $(KSRC)/%.S $(KERNEL_HEADERS)
	mkdir -p $(dir $@)
	cd $(KSRC) && $(CC) $(CFLAGS_KERNEL) -c $*.S -o $(abspath $@)

$(BIN)/vmlinux: $(KERNEL_OBJECTS) $(KSRC)/vmlinux.lds | $(BIN)
	ld -m elf_i386 --build-id=none -T $(KSRC)/vmlinux.lds -o $@ $(KERNEL_OBJECTS)
