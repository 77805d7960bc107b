/*
 * godwit-init: starts a command the way CRIU can move it (`godwit run`, agent/run-workload.ts).
 *
 * Usage: godwit-init --output FILE [--user USER] [--cwd DIR] -- CMD ARGS...
 *
 * The program that runs it (the launcher) makes a new PID namespace and a new IPC namespace and
 * forks; the child is PID 1 of the new PID namespace (the init). The launcher prints the init's
 * host PID on stdout once CMD has been exec'd (or the reason it could not be, exit 1) and exits:
 * the init is then nobody's child on this host, as a restored tree is on the target.
 *
 * Why each piece (FIELD-NOTES.md, "Running a workload so that CRIU can move it"):
 *  - Own PID namespace: restore needs every dumped PID free; inside a fresh namespace they are.
 *  - A root init as its first process: CRIU cannot dump a namespace whose first process is not
 *    root ("can't dump unprivileged task whose /proc doesn't belong to it"); CMD runs as --user.
 *  - setsid in the init: the session leader must be inside the namespace.
 *  - Own IPC namespace: CRIU dumps SysV shared memory only with its IPC namespace.
 *  - Inherited descriptors closed: a pipe to a process outside the tree cannot be dumped.
 *  - stdin /dev/null, stdout and stderr appended to FILE: a regular file nobody else writes; the
 *    agent carries it with the image so that it has the same size at restore as at dump.
 *
 * The init reaps every orphan of the namespace, forwards the usual termination and control
 * signals to CMD, and exits with CMD's status when CMD exits (the kernel then ends the rest).
 * CMD starts with every signal at its default and none blocked.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const int FORWARDED[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT };

static void usage(void)
{
	fprintf(stderr, "usage: godwit-init --output FILE [--user USER] [--cwd DIR] -- CMD ARGS...\n");
	exit(2);
}

/* Writes a message to the launcher's status pipe (the grandchild's exec failure, or the init's). */
static void report(int fd, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n > 0 && write(fd, buf, (size_t)n > sizeof buf ? sizeof buf : (size_t)n) < 0) {
		/* the launcher is gone: nothing else to tell */
	}
}

/* Closes every descriptor above 2 except `keep`: whatever started us may have leaked some. */
static void close_inherited(int keep)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	int dfd = dirfd(d);
	int fds[4096], n = 0;
	struct dirent *e;
	while ((e = readdir(d)) && n < 4096) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] >= '0' && e->d_name[0] <= '9' && fd > 2 && fd != keep && fd != dfd)
			fds[n++] = fd;
	}
	closedir(d);
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

static void on_forwarded(int sig)
{
	(void)sig; /* a handler, not SIG_DFL: an init ignores default-action signals */
}

/* Runs as PID 1 of the new namespace. Never returns. */
static void run_init(int status_fd, const char *output, const char *user, const char *cwd, char **cmd)
{
	if (setsid() < 0) {
		report(status_fd, "setsid: %s", strerror(errno));
		_exit(1);
	}
	close_inherited(status_fd);
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int out = open(output, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (devnull < 0 || out < 0) {
		report(status_fd, "cannot open %s: %s", out < 0 ? output : "/dev/null", strerror(errno));
		_exit(1);
	}
	dup2(devnull, 0);
	dup2(out, 1);
	dup2(out, 2);
	close(devnull);
	close(out);
	if (chdir(cwd) < 0) {
		report(status_fd, "chdir %s: %s", cwd, strerror(errno));
		_exit(1);
	}

	struct passwd *pw = NULL;
	if (user) {
		pw = getpwnam(user);
		if (!pw) {
			report(status_fd, "no user %s on this host", user);
			_exit(1);
		}
	}

	sigset_t all, waited;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	struct sigaction sa = { .sa_handler = on_forwarded };
	for (size_t i = 0; i < sizeof FORWARDED / sizeof FORWARDED[0]; i++)
		sigaction(FORWARDED[i], &sa, NULL);
	sigaction(SIGCHLD, &sa, NULL);

	pid_t child = fork();
	if (child < 0) {
		report(status_fd, "fork: %s", strerror(errno));
		_exit(1);
	}
	if (child == 0) {
		/* Every signal back to its default: what started the agent may have ignored some
		 * (node ignores SIGPIPE), and exec keeps an ignored signal ignored. */
		sigset_t none;
		sigemptyset(&none);
		struct sigaction dfl = { .sa_handler = SIG_DFL };
		for (int sig = 1; sig < NSIG; sig++)
			if (sig != SIGKILL && sig != SIGSTOP)
				sigaction(sig, &dfl, NULL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (pw) {
			if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
				report(status_fd, "cannot become %s: %s", pw->pw_name, strerror(errno));
				_exit(127);
			}
			setenv("HOME", pw->pw_dir, 1);
			setenv("USER", pw->pw_name, 1);
			setenv("LOGNAME", pw->pw_name, 1);
		}
		execvp(cmd[0], cmd);
		report(status_fd, "cannot run %s: %s", cmd[0], strerror(errno));
		_exit(127);
	}
	/* The status pipe closes when CMD has exec'd (close-on-exec) and this end is closed. */
	close(status_fd);

	sigemptyset(&waited);
	for (size_t i = 0; i < sizeof FORWARDED / sizeof FORWARDED[0]; i++)
		sigaddset(&waited, FORWARDED[i]);
	sigaddset(&waited, SIGCHLD);
	for (;;) {
		siginfo_t si;
		int sig = sigwaitinfo(&waited, &si);
		if (sig < 0)
			continue; /* EINTR, e.g. around a checkpoint */
		if (sig != SIGCHLD) {
			kill(child, sig);
			continue;
		}
		for (;;) {
			int st;
			pid_t p = waitpid(-1, &st, WNOHANG);
			if (p <= 0)
				break;
			if (p == child) {
				if (WIFSIGNALED(st))
					fprintf(stderr, "godwit-init: %s ended by signal %d\n", cmd[0], WTERMSIG(st));
				else
					fprintf(stderr, "godwit-init: %s exited with status %d\n", cmd[0], WEXITSTATUS(st));
				_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
			}
		}
	}
}

int main(int argc, char **argv)
{
	const char *output = NULL, *user = NULL, *cwd = "/";
	int i = 1;
	for (; i < argc; i++) {
		if (!strcmp(argv[i], "--")) {
			i++;
			break;
		}
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--output"))
			output = argv[++i];
		else if (!strcmp(argv[i], "--user"))
			user = argv[++i];
		else if (!strcmp(argv[i], "--cwd"))
			cwd = argv[++i];
		else
			usage();
	}
	if (!output || i >= argc)
		usage();
	char **cmd = &argv[i];

	if (unshare(CLONE_NEWPID | CLONE_NEWIPC) < 0) {
		fprintf(stderr, "godwit-init: unshare: %s\n", strerror(errno));
		return 1;
	}
	int status[2];
	if (pipe2(status, O_CLOEXEC) < 0) {
		fprintf(stderr, "godwit-init: pipe: %s\n", strerror(errno));
		return 1;
	}
	pid_t init = fork();
	if (init < 0) {
		fprintf(stderr, "godwit-init: fork: %s\n", strerror(errno));
		return 1;
	}
	if (init == 0) {
		close(status[0]);
		run_init(status[1], output, user, cwd, cmd);
	}
	close(status[1]);
	char msg[512];
	size_t got = 0;
	for (;;) {
		ssize_t n = read(status[0], msg + got, sizeof msg - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got >= sizeof msg - 1)
			break;
	}
	msg[got] = '\0';
	if (got > 0) {
		fprintf(stderr, "godwit-init: %s\n", msg);
		return 1;
	}
	printf("%d\n", (int)init);
	return 0;
}
