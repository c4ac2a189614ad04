// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferryctl: what ferry is doing on this host.
 *   status                   module loaded?  ABI, features, limits, /dev/ferry
 *                            permissions, the backend libferry picks, GPUs
 *   regions|sessions|grants|users  the module's debugfs view (root), like ipcs
 *   stats [--socket PATH]    a running broker's counters (opts.stats_path)
 * --json gives each as JSON.  Exit status: 0, 1 when what was asked for is
 * not there (with a line saying why), 2 for bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/ferry.h>

#include "ferry.h"
#include "unix_socket.h"

#define DEBUGFS "/sys/kernel/debug/ferry/"

static bool json;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferryctl [--json] COMMAND\n"
		"  status                  module, ABI version, /dev/ferry, backend, GPUs\n"
		"  regions                 regions the module holds (debugfs, root)\n"
		"  sessions                open /dev/ferry sessions (debugfs, root)\n"
		"  grants                  who may map which region (debugfs, root)\n"
		"  users                   what each uid holds against the per-user caps\n"
		"                          (debugfs, root)\n"
		"  stats [--socket PATH]   a running broker's counters; PATH is its\n"
		"                          opts.stats_path ($FERRY_STATS_SOCKET)\n"
		"  --json                  print JSON instead of a table\n");
}

/* A JSON string (the values here are short, printable words and paths). */
static void jstr(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		if ((unsigned char)*s >= 0x20)
			putchar(*s);
	}
	putchar('"');
}

static bool is_number(const char *s)
{
	if (*s == '-')
		s++;
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static void jval(const char *s)
{
	if (is_number(s))
		fputs(s, stdout);
	else
		jstr(s);
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, got = 0;

	if (fd < 0)
		return -errno;
	while ((size_t)got < len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
		got += n;
	close(fd);
	buf[got] = 0;
	return 0;
}

static int status(void)
{
	struct ferry_version v = { 0 };
	bool loaded = access("/sys/module/ferry", F_OK) == 0;
	int fd = open("/dev/" FERRY_DEVICE_NAME, O_RDWR | O_CLOEXEC), open_err = errno;
	bool have_version = fd >= 0 && ioctl(fd, FERRY_IOC_VERSION, &v) == 0;
	int backend = ferry_backend_resolve(FERRY_BACKEND_AUTO);
	int gpus = ferry_gpu_count_forked();
	char mode[16] = "-", group[64] = "-";
	struct stat st;

	if (fd >= 0)
		close(fd);
	if (stat("/dev/" FERRY_DEVICE_NAME, &st) == 0) {
		struct group *g = getgrgid(st.st_gid);

		snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
		if (g)
			snprintf(group, sizeof(group), "%s", g->gr_name);
		else
			snprintf(group, sizeof(group), "%u", st.st_gid);
	}
	if (json) {
		printf("{\"module_loaded\":%s,\"device\":%s,\"device_mode\":", loaded ? "true" : "false",
		       stat("/dev/" FERRY_DEVICE_NAME, &st) == 0 ? "true" : "false");
		jstr(mode);
		printf(",\"device_group\":");
		jstr(group);
		printf(",\"device_opens\":%s", fd >= 0 ? "true" : "false");
		if (have_version)
			printf(",\"abi_version\":%u,\"abi_expected\":%u,\"features\":%llu,"
			       "\"max_regions\":%llu,\"max_bytes\":%llu", v.abi_version,
			       FERRY_ABI_VERSION, (unsigned long long)v.features,
			       (unsigned long long)v.max_regions, (unsigned long long)v.max_bytes);
		printf(",\"backend\":");
		jstr(backend < 0 ? "none" : ferry_backend_name((enum ferry_backend)backend));
		printf(",\"gpus\":%d}\n", gpus < 0 ? 0 : gpus);
		return 0;
	}
	printf("%-16s %s\n", "module", loaded ? "loaded" : "not loaded");
	if (stat("/dev/" FERRY_DEVICE_NAME, &st) == 0)
		printf("%-16s /dev/%s mode %s group %s (%s)\n", "device", FERRY_DEVICE_NAME, mode,
		       group, fd >= 0 ? "this user can open it" : strerror(open_err));
	else
		printf("%-16s no /dev/%s\n", "device", FERRY_DEVICE_NAME);
	if (have_version)
		printf("%-16s %u (libferry speaks %u)%s\n%-16s %llu regions, %llu bytes per "
		       "session\n", "ABI version", v.abi_version, FERRY_ABI_VERSION,
		       v.abi_version == FERRY_ABI_VERSION ? "" : ": MISMATCH", "limits",
		       (unsigned long long)v.max_regions, (unsigned long long)v.max_bytes);
	printf("%-16s %s\n", "backend", backend < 0 ? "none usable" :
	       ferry_backend_name((enum ferry_backend)backend));
	printf("%-16s %d\n", "GPUs", gpus < 0 ? 0 : gpus);
	return 0;
}

/*
 * Lines of "key value" pairs (a lone word first is the line's kind, a lone
 * word last its state) as a table or a JSON array of objects.
 */

static void table(char *text, const char *kind)
{
	bool first_row = true;
	int rows = 0;

	if (json)
		putchar('[');
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *tok[32];
		int n = 0, k = 0;
		char *save;

		for (char *w = strtok_r(line, " ", &save); w && n < 32; w = strtok_r(NULL, " ", &save))
			tok[n++] = w;
		/* "grant region 3 ...": the kind word leads, alone (in "region 3
		 * size ... live" it is a key, and the lone word is the state). */
		if (n > 1 && n % 2 && strcmp(tok[0], kind) == 0 && !is_number(tok[1]))
			k = 1;
		if (json) {
			printf("%s{", first_row ? "" : ",");
			for (int i = k; i + 1 < n; i += 2) {
				printf("%s", i > k ? "," : "");
				jstr(tok[i]);
				putchar(':');
				jval(tok[i + 1]);
			}
			if ((n - k) % 2) {
				printf("%s\"state\":", n - k > 1 ? "," : "");
				jstr(tok[n - 1]);
			}
			putchar('}');
		} else {
			for (int i = k; i + 1 < n; i += 2)
				printf("%s=%s  ", tok[i], tok[i + 1]);
			if ((n - k) % 2)
				printf("%s", tok[n - 1]);
			putchar('\n');
		}
		first_row = false;
		rows++;
	}
	if (json)
		puts("]");
	else if (!rows)
		printf("(no %ss)\n", kind);
}

static int debugfs_view(const char *what)
{
	char path[128], kind[32], *buf = malloc(1 << 20);
	int err;

	if (!buf)
		return 1;
	snprintf(path, sizeof(path), DEBUGFS "%s", what);
	err = read_file(path, buf, 1 << 20);
	if (err) {
		if (access("/sys/module/ferry", F_OK) != 0)
			fprintf(stderr, "ferryctl: the ferry module is not loaded\n");
		else if (access("/sys/kernel/debug/ferry", F_OK) != 0 && geteuid() != 0)
			fprintf(stderr, "ferryctl: %s needs root (debugfs)\n", what);
		else if (access("/sys/kernel/debug/ferry", F_OK) != 0)
			fprintf(stderr, "ferryctl: debugfs is not mounted "
				"(mount -t debugfs none /sys/kernel/debug)\n");
		else
			fprintf(stderr, "ferryctl: %s: %s\n", path, strerror(-err));
		free(buf);
		return 1;
	}
	snprintf(kind, sizeof(kind), "%.*s", (int)strlen(what) - 1, what);	/* singular */
	table(buf, kind);
	free(buf);
	return 0;
}

static int stats(const char *sock)
{
	char *buf = malloc(65537);
	ssize_t n;
	int fd;

	if (!sock || !*sock) {
		fprintf(stderr, "ferryctl: stats needs the broker's socket: --socket PATH "
			"or $FERRY_STATS_SOCKET (the broker's opts.stats_path)\n");
		free(buf);
		return 2;
	}
	fd = ferry_unix_connect(sock);
	if (fd < 0 || !buf) {
		fprintf(stderr, "ferryctl: no broker answers at %s: %s\n", sock, strerror(-fd));
		free(buf);
		return 1;
	}
	n = recv(fd, buf, 65536, 0);
	close(fd);
	if (n <= 0) {
		fprintf(stderr, "ferryctl: the broker at %s said nothing (%s)\n", sock,
			n < 0 ? strerror(errno) : "not the same user?");
		free(buf);
		return 1;
	}
	buf[n] = 0;
	if (json) {
		/* "key value" lines into one object; "helper" lines into an array. */
		char *save, *hl = strstr(buf, "\nhelper ");

		if (hl)
			*hl++ = 0;
		putchar('{');
		bool first = true;

		for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			char *sp = strchr(line, ' ');

			if (!sp)
				continue;
			*sp = 0;
			printf("%s", first ? "" : ",");
			jstr(line);
			putchar(':');
			jval(sp + 1);
			first = false;
		}
		printf(",\"helpers_detail\":");
		if (hl)
			table(hl, "helper");
		else
			puts("[]");
		puts("}");
		free(buf);
		return 0;
	}
	printf("%s", buf);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	const char *sock = getenv("FERRY_STATS_SOCKET"), *cmd = NULL;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			json = true;
		} else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
			sock = argv[++i];
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (!cmd && argv[i][0] != '-') {
			cmd = argv[i];
		} else {
			fprintf(stderr, "ferryctl: unexpected '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (!cmd) {
		usage(stderr);
		return 2;
	}
	if (strcmp(cmd, "status") == 0)
		return status();
	if (strcmp(cmd, "regions") == 0 || strcmp(cmd, "sessions") == 0 ||
	    strcmp(cmd, "grants") == 0 || strcmp(cmd, "users") == 0)
		return debugfs_view(cmd);
	if (strcmp(cmd, "stats") == 0)
		return stats(sock);
	fprintf(stderr, "ferryctl: no command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
