// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Which GPUs a broker's helpers will find, and the NUMA node each sits on,
 * asked by a throwaway child: the broker itself must never initialise CUDA
 * (its state does not survive the fork of every helper and child).  The
 * node comes from the GPU's PCI device in sysfs (-1 where the platform
 * does not say).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker_internal.h"
#include "cuda_api.h"

static int pci_node(const char *busid)
{
	char path[96], id[32];
	int node = -1;
	size_t i;
	FILE *f;

	for (i = 0; busid[i] && i < sizeof(id) - 1; i++)
		id[i] = (char)tolower((unsigned char)busid[i]);
	id[i] = 0;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/numa_node", id);
	f = fopen(path, "re");
	if (!f)
		return -1;
	if (fscanf(f, "%d", &node) != 1)
		node = -1;
	fclose(f);
	return node;
}

static _Noreturn void probe_child(int fd)
{
	struct ferry_cuda *cu;
	int n = ferry_cuda_get(&cu) ? 0 : cu->ndevices;

	if (n > FERRY_MAX_GPUS)
		n = FERRY_MAX_GPUS;
	if (write(fd, &n, sizeof(n)) != sizeof(n))
		_exit(1);
	for (int d = 0; d < n; d++) {
		char busid[32] = "";
		CUdevice dev;
		int node = -1;

		if (cu->cuDeviceGet(&dev, d) == CUDA_SUCCESS &&
		    cu->cuDeviceGetPCIBusId(busid, sizeof(busid), dev) == CUDA_SUCCESS)
			node = pci_node(busid);
		if (write(fd, &node, sizeof(node)) != sizeof(node))
			_exit(1);
	}
	_exit(0);
}

int ferry_gpu_probe(int nodes[FERRY_MAX_GPUS])
{
	int p[2], n = 0, status;
	pid_t pid;

	if (pipe(p))
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		n = -errno;
		close(p[0]);
		close(p[1]);
		return n;
	}
	if (pid == 0) {
		close(p[0]);
		probe_child(p[1]);
	}
	close(p[1]);
	if (read(p[0], &n, sizeof(n)) != sizeof(n) || n < 0 || n > FERRY_MAX_GPUS)
		n = 0;
	for (int d = 0; d < n; d++)
		if (read(p[0], &nodes[d], sizeof(nodes[d])) != sizeof(nodes[d]))
			nodes[d] = -1;
	close(p[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return n;
}

int ferry_gpu_count_forked(void)
{
	int nodes[FERRY_MAX_GPUS];

	return ferry_gpu_probe(nodes);
}
