// SPDX-License-Identifier: GPL-2.0
/*
 * ferryctl against the module (in the VM, where it is loaded; skipped with
 * the reason elsewhere): a region this test made and granted to a forked
 * child shows up in `ferryctl regions`, `grants` and `sessions` with the
 * right pids and sizes, as a table and as JSON; `status` reports the
 * module, its ABI and the device.
 *
 * The ferryctl binary: $FERRYCTL, else build/ferryctl next to this test's
 * build tree, else /bin/ferryctl (the VM's initramfs).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

static const char *ferryctl(void)
{
	static char path[PATH_MAX];
	const char *env = getenv("FERRYCTL");
	ssize_t n;

	if (env && *env)
		return env;
	n = readlink("/proc/self/exe", path, sizeof(path) - 32);
	if (n > 0) {
		path[n] = 0;
		/* build/tests/tools/ferryctl -> build/ferryctl */
		for (int up = 0; up < 3; up++) {
			char *slash = strrchr(path, '/');

			if (slash)
				*slash = 0;
		}
		strcat(path, "/ferryctl");
		if (access(path, X_OK) == 0)
			return path;
	}
	return "/bin/ferryctl";
}

/* Run ferryctl with @args; its stdout in @buf; its exit status. */
static int run(const char *args, char *buf, size_t len)
{
	char cmd[PATH_MAX + 128];
	size_t got = 0;
	FILE *p;
	int rc;

	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", ferryctl(), args);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	while (got < len - 1 && fgets(buf + got, (int)(len - got), p))
		got += strlen(buf + got);
	buf[got] = 0;
	rc = pclose(p);
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

#define NEED_MODULE()								\
	do {									\
		if (access(ferryctl(), X_OK))					\
			SKIP(return, "no ferryctl binary at %s", ferryctl());	\
		if (access("/sys/kernel/debug/ferry/regions", R_OK))		\
			SKIP(return, "module not loaded or debugfs not mounted");	\
	} while (0)

TEST(status_reports_the_module)
{
	char out[4096];

	NEED_MODULE();
	ASSERT_EQ(0, run("status", out, sizeof(out)));
	TH_LOG("%s", out);
	EXPECT_NE(NULL, strstr(out, "module           loaded"));
	EXPECT_NE(NULL, strstr(out, "ABI version      1 (libferry speaks 1)"));
	EXPECT_NE(NULL, strstr(out, "backend          kmod"));
	ASSERT_EQ(0, run("--json status", out, sizeof(out)));
	EXPECT_NE(NULL, strstr(out, "\"module_loaded\":true"));
	EXPECT_NE(NULL, strstr(out, "\"abi_version\":1,"));
}

TEST(regions_grants_sessions_show_what_we_made)
{
	struct ferry_rctx *rc;
	struct ferry_region *r;
	char out[65536], want[256];
	int go[2], pidfd;
	pid_t child;

	NEED_MODULE();
	ASSERT_EQ(0, ferry_rctx_open(FERRY_BACKEND_KMOD, &rc));
	ASSERT_EQ(0, ferry_region_create(rc, 3 << 20, -1, &r));
	ASSERT_EQ(0, pipe(go));
	child = fork();
	ASSERT_LE(0, child);
	if (child == 0) {
		char c;

		close(go[1]);
		_exit(read(go[0], &c, 1) < 0);	/* until the parent is done */
	}
	close(go[0]);
	pidfd = (int)syscall(SYS_pidfd_open, child, 0);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ));

	ASSERT_EQ(0, run("regions", out, sizeof(out)));
	snprintf(want, sizeof(want), "size=%d  owner_pid=%d", 3 << 20, (int)getpid());
	EXPECT_NE(NULL, strstr(out, want)) TH_LOG("regions:\n%s", out);
	ASSERT_EQ(0, run("grants", out, sizeof(out)));
	snprintf(want, sizeof(want), "pid=%d  rights=r", (int)child);
	EXPECT_NE(NULL, strstr(out, want)) TH_LOG("grants:\n%s", out);
	ASSERT_EQ(0, run("--json grants", out, sizeof(out)));
	snprintf(want, sizeof(want), "\"pid\":%d,\"rights\":\"r\"}", (int)child);
	EXPECT_NE(NULL, strstr(out, want)) TH_LOG("grants json:\n%s", out);
	ASSERT_EQ(0, run("sessions", out, sizeof(out)));
	snprintf(want, sizeof(want), "owner_pid=%d  regions=1  bytes=%d", (int)getpid(), 3 << 20);
	EXPECT_NE(NULL, strstr(out, want)) TH_LOG("sessions:\n%s", out);
	ASSERT_EQ(0, run("users", out, sizeof(out)));
	snprintf(want, sizeof(want), "%d  sessions=", (int)getuid());
	EXPECT_NE(NULL, strstr(out, want)) TH_LOG("users:\n%s", out);
	ASSERT_EQ(0, run("--json regions", out, sizeof(out)));
	EXPECT_EQ('[', out[0]);
	EXPECT_NE(NULL, strstr(out, "\"state\":\"live\"")) TH_LOG("regions json:\n%s", out);

	close(go[1]);
	waitpid(child, NULL, 0);
	close(pidfd);
	ferry_region_close(r);
	ferry_rctx_close(rc);
}

TEST(bad_command_is_usage_error)
{
	char out[4096];

	if (access(ferryctl(), X_OK))
		SKIP(return, "no ferryctl binary at %s", ferryctl());
	EXPECT_EQ(2, run("frobnicate", out, sizeof(out)));
	EXPECT_NE(NULL, strstr(out, "no command 'frobnicate'"));
}

TEST_HARNESS_MAIN
