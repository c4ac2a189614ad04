// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Forks that the interpreter did not make, made safe for it.
 *
 * libferry forks its helpers and children from C: at start from the
 * thread that called ferry_broker_start() (through ctypes, which has let
 * the GIL go), later (a helper restarted) from the broker's dispatch
 * thread, which Python has never seen.  A forked copy of a process whose
 * GIL another thread held is dead on arrival: the first Python call waits
 * for a thread that does not exist.  os.fork() avoids that by holding the
 * GIL across fork() and calling PyOS_AfterFork_Child() in the child.
 *
 * These pthread_atfork() hooks do the same for any fork made by a thread
 * that does not hold the GIL (os.fork() holds it and does its own): take
 * the GIL before fork(), give it back in the parent; in the child run
 * PyOS_AfterFork_Child() (locks and threads reset, this thread the main
 * one, os.register_at_fork() hooks) and let the GIL go, keeping this
 * thread's state for the callbacks that come.
 *
 * No Python headers: the few functions are of the stable ABI, declared
 * here and resolved against the running interpreter when it loads this
 * file, so one build serves every Python 3.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>

int PyGILState_Ensure(void);
void PyGILState_Release(int state);
int PyGILState_Check(void);
int Py_IsInitialized(void);
void PyOS_AfterFork_Child(void);
void *PyEval_SaveThread(void);

static int (*is_finalizing)(void);
static __thread int held, gil_state;

static void prepare(void)
{
	held = 0;
	if (!Py_IsInitialized() || (is_finalizing && is_finalizing()) || PyGILState_Check())
		return;
	gil_state = PyGILState_Ensure();
	held = 1;
}

static void parent(void)
{
	if (!held)
		return;
	held = 0;
	PyGILState_Release(gil_state);
}

static void child(void)
{
	if (!held)
		return;
	held = 0;
	PyOS_AfterFork_Child();
	PyEval_SaveThread();
}

/* Once per process; 0 or an errno value. */
int ferry_py_forksafe_install(void)
{
	static int done, err;

	if (done)
		return err;
	done = 1;
	is_finalizing = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsFinalizing");
	if (!is_finalizing)
		is_finalizing = (int (*)(void))dlsym(RTLD_DEFAULT, "_Py_IsFinalizing");
	err = pthread_atfork(prepare, parent, child);
	return err;
}
