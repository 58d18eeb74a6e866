/*
 * reseed: make the kernel reseed its CRNG from the input pool, now.
 *
 * A guest resumed from a saved state (a template) starts with the CRNG state of
 * the template, shared by every copy. /init writes the copy's own seed (from the
 * configuration line) into /dev/urandom, which only mixes it into the input pool;
 * the RNDRESEEDCRNG ioctl makes crng_reseed() turn that pool into a new CRNG key
 * and bumps the generation, so the per-CPU CRNGs rekey too. (The Debian cloud
 * kernel has no CONFIG_VMGENID, so QEMU's vmgenid device cannot do this.)
 *
 * Needs CAP_SYS_ADMIN. Exit status: 0 done; otherwise the errno of the failed
 * open (status 100 + errno) or ioctl (status errno).
 *
 * No libc: the guest has no compiler and a static libc binary would be far bigger;
 * built by images/build.sh with
 *   cc -nostdlib -static -ffreestanding -fno-stack-protector -Os -o reseed reseed.c
 * x86-64 only (the guests are).
 */

#define SYS_open 2
#define SYS_ioctl 16
#define SYS_exit 60
#define O_WRONLY 01
#define O_CLOEXEC 02000000
#define RNDRESEEDCRNG 0x5207 /* _IO('R', 0x07), <linux/random.h> */

static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static int reseed(void)
{
	long fd = sys3(SYS_open, (long)"/dev/urandom", O_WRONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return 100 + (int)-fd;
	long ret = sys3(SYS_ioctl, fd, RNDRESEEDCRNG, 0);
	if (ret < 0)
		return (int)-ret;
	return 0;
}

void __attribute__((noreturn, used)) netlab_main(void)
{
	sys3(SYS_exit, reseed(), 0, 0);
	__builtin_unreachable();
}

/* the entry point: the stack is 16-byte aligned here; a call keeps the ABI's layout */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	and $-16, %rsp\n"
	"	call netlab_main\n"
	"	hlt\n");
