/*
 * macvz-exec, the exec helper of Linux guests, in C.
 *
 * The same program as cmd/macvz-exec (runtime/agent/exechelper: the
 * arguments, the order of the steps and the messages are that package's),
 * without a Go runtime: under TCG a Go program's start-up (the runtime,
 * its threads, the pages of a 1.7 MB binary) is 60-100 ms of the guest's
 * only vCPU, paid by every container start and every exec. The guest
 * builder (integration/guest) puts this build at /usr/libexec/macvz-exec
 * when it has a C compiler for the guest's architecture, else the Go one;
 * runtime/agent's tests run both against the same cases.
 *
 *	macvz-exec __macvz_exec [key=value ...] -- PATH ARGV...
 *
 * It never returns to the agent: it execs PATH or exits 127 with the
 * reason on stderr (the process's own stderr, which the agent reports).
 * Its arguments come from the agent, not from the guest's processes; they
 * are still checked as the Go build checks them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <grp.h>

#define MARKER "__macvz_exec"
#define MAX_INSNS 4096 /* BPF_MAXINSNS */
#define MAX_GROUPS 65536 /* NGROUPS_MAX */
#define CAP_LAST_CAP_DEFAULT 40

extern char **environ;

static void fail(const char *format, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *format, ...)
{
	va_list ap;
	fputs("macvz-agent: ", stderr);
	va_start(ap, format);
	vfprintf(stderr, format, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	_exit(127);
}

/* linux/capability.h's numbers, as exechelper.CapNames. */
static const char *const cap_names[] = {
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
};
#define NCAPS ((int)(sizeof cap_names / sizeof cap_names[0]))

/* The settings, as exechelper.Spec. */
struct spec {
	int nnp;
	uint32_t uid, gid;
	gid_t *groups;
	size_t ngroups;
	int restrict_caps;
	unsigned char keep[NCAPS];
	int new_mntns, join_mntns, ro_root, new_pidns;
	char **ropaths, **maskpaths;
	size_t nro, nmask;
	struct sock_filter *filter;
	size_t ninsns;
	int have_flags;
	unsigned int seccomp_flags;
	int sync_fd;
};

/* parse_u32 reads a decimal number that fits 32 bits (strconv.ParseUint's
 * base 10, bit size 32: digits only). */
static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t n = 0;
	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		n = n * 10 + (uint64_t)(*s - '0');
		if (n > UINT32_MAX)
			return -1;
	}
	*out = (uint32_t)n;
	return 0;
}

/* parse_int reads strconv.Atoi's form within an int: an optional sign,
 * digits. */
static int parse_int(const char *s, int *out)
{
	int neg = 0;
	long long n = 0;
	if (*s == '+' || *s == '-')
		neg = *s++ == '-';
	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		n = n * 10 + (*s - '0');
		if (n > (long long)INT_MAX + 1)
			return -1;
	}
	if (neg)
		n = -n;
	if (n > INT_MAX || n < INT_MIN)
		return -1;
	*out = (int)n;
	return 0;
}

static void *grow(void *p, size_t n, size_t size)
{
	p = realloc(p, n * size);
	if (p == NULL)
		fail("exec helper: out of memory");
	return p;
}

static int b64val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* b64decode decodes standard, padded base64 (encoding/base64's
 * StdEncoding) into a new buffer; -1 on any other form. */
static long b64decode(const char *s, unsigned char **out)
{
	size_t len = strlen(s), n = 0;
	unsigned char *b;
	if (len % 4 != 0)
		return -1;
	b = malloc(len / 4 * 3 + 1);
	if (b == NULL)
		fail("exec helper: out of memory");
	for (size_t i = 0; i < len; i += 4) {
		int v[4], pad = 0;
		for (int j = 0; j < 4; j++) {
			unsigned char c = (unsigned char)s[i + j];
			if (c == '=' && i + 4 == len && j >= 2) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[j] = b64val(c)) < 0) {
				free(b);
				return -1;
			}
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		b[n++] = (unsigned char)(w >> 16);
		if (pad < 2)
			b[n++] = (unsigned char)(w >> 8);
		if (pad < 1)
			b[n++] = (unsigned char)w;
	}
	*out = b;
	return (long)n;
}

/* parse_filter is exechelper.ParseFilter: 1 to MAX_INSNS instructions of
 * 8 little-endian bytes each. */
static void parse_filter(const unsigned char *b, long n, struct spec *h)
{
	if (n <= 0 || n % 8 != 0 || n / 8 > MAX_INSNS)
		fail("exec helper: seccomp program of %ld bytes is not 1 to %d instructions", n < 0 ? 0 : n, MAX_INSNS);
	h->ninsns = (size_t)n / 8;
	h->filter = grow(h->filter, h->ninsns, sizeof *h->filter);
	for (size_t i = 0; i < h->ninsns; i++) {
		const unsigned char *o = b + 8 * i;
		h->filter[i].code = (uint16_t)(o[0] | o[1] << 8);
		h->filter[i].jt = o[2];
		h->filter[i].jf = o[3];
		h->filter[i].k = (uint32_t)o[4] | (uint32_t)o[5] << 8 | (uint32_t)o[6] << 16 | (uint32_t)o[7] << 24;
	}
}

static int cap_number(const char *name, size_t len)
{
	for (int i = 0; i < NCAPS; i++)
		if (strlen(cap_names[i]) == len && memcmp(cap_names[i], name, len) == 0)
			return i;
	return -1;
}

/* parse reads the settings up to "--" (exechelper's parse) and returns
 * the index of the path after it. */
static int parse(int argc, char **argv, struct spec *h)
{
	int i = 2;
	for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
		char *a = argv[i], *v = strchr(a, '=');
		size_t klen = v ? (size_t)(v - a) : strlen(a);
		v = v ? v + 1 : a + klen;
#define KEY(k) (klen == sizeof(k) - 1 && memcmp(a, k, klen) == 0)
		if (KEY("nnp")) {
			h->nnp = strcmp(v, "true") == 0;
		} else if (KEY("uid") || KEY("gid") || KEY("group")) {
			uint32_t n;
			if (parse_u32(v, &n) != 0)
				fail("exec helper: bad %.*s \"%s\"", (int)klen, a, v);
			if (KEY("uid")) {
				h->uid = n;
			} else if (KEY("gid")) {
				h->gid = n;
			} else {
				if (h->ngroups >= MAX_GROUPS)
					fail("exec helper: more than %d groups", MAX_GROUPS);
				h->groups = grow(h->groups, h->ngroups + 1, sizeof *h->groups);
				h->groups[h->ngroups++] = n;
			}
		} else if (KEY("caps")) {
			h->restrict_caps = 1;
			memset(h->keep, 0, sizeof h->keep);
			for (const char *p = v; *v != '\0';) {
				const char *end = strchr(p, ',');
				size_t len = end ? (size_t)(end - p) : strlen(p);
				int c = cap_number(p, len);
				if (c < 0)
					fail("exec helper: unknown capability \"%.*s\"", (int)len, p);
				h->keep[c] = 1;
				if (end == NULL)
					break;
				p = end + 1;
			}
		} else if (KEY("sync")) {
			int n;
			if (parse_int(v, &n) != 0 || n < 3)
				fail("exec helper: bad sync fd \"%s\"", v);
			h->sync_fd = n;
		} else if (KEY("mntns")) {
			int n;
			if (strcmp(v, "new") == 0) {
				h->new_mntns = 1;
			} else if (strncmp(v, "join:", 5) != 0 || parse_int(v + 5, &n) != 0 || n <= 0) {
				fail("exec helper: bad mntns \"%s\"", v);
			} else {
				h->join_mntns = n;
			}
		} else if (KEY("roroot")) {
			h->ro_root = strcmp(v, "true") == 0;
		} else if (KEY("ropath")) {
			h->ropaths = grow(h->ropaths, h->nro + 1, sizeof *h->ropaths);
			h->ropaths[h->nro++] = v;
		} else if (KEY("maskpath")) {
			h->maskpaths = grow(h->maskpaths, h->nmask + 1, sizeof *h->maskpaths);
			h->maskpaths[h->nmask++] = v;
		} else if (KEY("pidns")) {
			h->new_pidns = strcmp(v, "new") == 0;
		} else if (KEY("seccomp")) {
			unsigned char *b;
			long n = b64decode(v, &b);
			if (n < 0)
				fail("exec helper: bad seccomp program: not base64");
			parse_filter(b, n, h);
			free(b);
		} else if (KEY("seccompflags")) {
			uint32_t n;
			if (parse_u32(v, &n) != 0)
				fail("exec helper: bad seccomp flags \"%s\"", v);
			h->have_flags = 1;
			h->seccomp_flags = n;
		} else {
			fail("exec helper: unknown setting \"%s\"", a);
		}
#undef KEY
	}
	if (i + 1 >= argc)
		fail("exec helper: no command");
	if (h->have_flags && h->ninsns == 0)
		fail("exec helper: seccomp flags without a program");
	return i + 1;
}

/* open_no_symlinks opens path as an O_PATH handle without following any
 * symbolic link on the way or at its end (exechelper's openNoSymlinks):
 * -1 when it does not exist. */
static int open_no_symlinks(const char *path)
{
	struct open_how how = {
		.flags = O_PATH | O_CLOEXEC | O_NOFOLLOW,
		.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	struct stat st;
	int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return -1;
		if (errno == ELOOP)
			fail("%s is or passes through a symbolic link; name the path the link leads to", path);
		fail("%s: %s", path, strerror(errno));
	}
	/* O_PATH|O_NOFOLLOW opens a link at the end itself: refuse it too. */
	if (fstat(fd, &st) != 0)
		fail("%s: %s", path, strerror(errno));
	if (S_ISLNK(st.st_mode))
		fail("%s is or passes through a symbolic link; name the path the link leads to", path);
	return fd;
}

static const char *fd_path(int fd, char *buf, size_t len)
{
	snprintf(buf, len, "/proc/self/fd/%d", fd);
	return buf;
}

/* The steps of exechelper's mountPlan, in its order: /proc for a new PID
 * namespace, the read-only paths, the masked ones, the read-only root. */
static void mount_steps(const struct spec *h)
{
	char p1[64], p2[64];
	if (h->new_pidns && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		fail("mounting /proc for the container's PID namespace: %s", strerror(errno));
	for (size_t i = 0; i < h->nro; i++) {
		const char *path = h->ropaths[i];
		int fd = open_no_symlinks(path), top;
		if (fd < 0)
			continue;
		if (mount(fd_path(fd, p1, sizeof p1), p1, NULL, MS_BIND | MS_REC, NULL) != 0)
			fail("read-only path %s: %s", path, strerror(errno));
		/* The handle still names the file under the new bind: open the
		 * path again to reach the bind itself. */
		top = open_no_symlinks(path);
		if (top < 0)
			fail("read-only path %s: reopening after the bind: it is gone", path);
		if (mount(NULL, fd_path(top, p2, sizeof p2), NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) != 0)
			fail("read-only path %s: %s", path, strerror(errno));
		close(top);
		close(fd);
	}
	for (size_t i = 0; i < h->nmask; i++) {
		const char *path = h->maskpaths[i];
		struct stat st;
		int fd = open_no_symlinks(path), r;
		if (fd < 0)
			continue;
		if (fstat(fd, &st) != 0)
			fail("%s: %s", path, strerror(errno));
		if (S_ISDIR(st.st_mode))
			r = mount("tmpfs", fd_path(fd, p1, sizeof p1), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0");
		else
			r = mount("/dev/null", fd_path(fd, p1, sizeof p1), NULL, MS_BIND, NULL);
		if (r != 0)
			fail("masking %s: %s", path, strerror(errno));
		close(fd);
	}
	if (h->ro_root && mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) != 0)
		fail("read-only root: %s", strerror(errno));
}

static int cap_last_cap(void)
{
	char buf[32];
	int n = CAP_LAST_CAP_DEFAULT, fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t r = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (r > 0) {
			int v;
			buf[r] = '\0';
			while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == ' '))
				buf[--r] = '\0';
			if (parse_int(buf, &v) == 0)
				n = v;
		}
	}
	return n;
}

static void install_seccomp(const struct spec *h)
{
	struct sock_fprog prog = {.len = (unsigned short)h->ninsns, .filter = h->filter};
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, h->seccomp_flags, &prog) != 0)
		fail("seccomp filter: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	struct spec h = {.sync_fd = -1};
	int cmd;
	if (argc < 2 || strcmp(argv[1], MARKER) != 0) {
		fputs("macvz-exec: the guest agent's exec helper; the agent runs it, not a user\n", stderr);
		return 2;
	}
	cmd = parse(argc, argv, &h);
	/* Closed by the exec below: the agent waits for that. */
	if (h.sync_fd >= 0 && fcntl(h.sync_fd, F_SETFD, FD_CLOEXEC) != 0)
		fail("exec helper: sync fd %d: %s", h.sync_fd, strerror(errno));
	if (h.new_mntns) {
		if (unshare(CLONE_FS | CLONE_NEWNS) != 0)
			fail("mount namespace: %s", strerror(errno));
		/* Nothing done here may reach the guest's own namespace. */
		if (mount("", "/", "", MS_REC | MS_SLAVE, NULL) != 0)
			fail("mount namespace: %s", strerror(errno));
		mount_steps(&h);
	} else if (h.join_mntns > 0) {
		char path[64];
		int fd;
		snprintf(path, sizeof path, "/proc/%d/ns/mnt", h.join_mntns);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fail("the container's mount namespace: open %s: %s", path, strerror(errno));
		if (unshare(CLONE_FS) != 0)
			fail("mount namespace: %s", strerror(errno));
		if (setns(fd, CLONE_NEWNS) != 0)
			fail("entering the container's mount namespace: %s", strerror(errno));
		close(fd);
	}
	if (h.restrict_caps) {
		int last = cap_last_cap();
		for (int c = 0; c <= last; c++) {
			if (c < NCAPS && h.keep[c])
				continue;
			if (prctl(PR_CAPBSET_DROP, (unsigned long)c, 0, 0, 0) != 0)
				fail("dropping capability %d: %s", c, strerror(errno));
		}
	}
	/* Without no_new_privs a filter needs CAP_SYS_ADMIN, gone after the
	 * uid switch: load it now, as runc does. With it, load it last. */
	if (h.ninsns > 0 && !h.nnp)
		install_seccomp(&h);
	if (setgroups(h.ngroups, h.groups) != 0)
		fail("setgroups: %s", strerror(errno));
	if (setgid(h.gid) != 0)
		fail("setgid: %s", strerror(errno));
	if (setuid(h.uid) != 0)
		fail("setuid: %s", strerror(errno));
	if (h.nnp) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
			fail("no_new_privs: %s", strerror(errno));
		if (h.ninsns > 0)
			install_seccomp(&h);
	}
	execve(argv[cmd], argv + cmd + 1, environ);
	fail("exec %s: %s", argv[cmd], strerror(errno));
}
