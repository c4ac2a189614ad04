#!/bin/bash
# The Python package on a GPU machine, from a tree built elsewhere (`make`
# on Debian; carry build/python, which holds libferry.so.0 with liburing
# linked in, and a copy of libnuma for hosts without it): the whole pytest
# suite (test_gpu.py: torch on the helpers) and the bench against
# torch.multiprocessing.  Logs and bench.json go to $OUT (default: a new
# folder under /tmp).  PYTHON picks the interpreter.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
py=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
export PYTHONPATH=$root/build/python${PYTHONPATH:+:$PYTHONPATH}
rc=0
{
	echo "# $(uname -r), $($py --version 2>&1), $(nproc) CPUs"
	ldd build/python/ferry/libferry.so.0
	$py -c 'import ferry, numpy, torch; print("# ferry", ferry.version(), "GPUs", ferry.gpu_count(), "numpy", numpy.__version__, "torch", torch.__version__)'
} 2>&1 | tee "$out/env.log"
if $py -c 'import pytest' 2>/dev/null; then
	$py -m pytest -v -rs -p no:cacheprovider -o console_output_style=classic \
		userspace/python/tests 2>&1 | tee "$out/pytest.log"
	rc=${PIPESTATUS[0]}
else
	echo "# no pytest here: the GPU cases alone, as a script"
	$py userspace/python/tests/test_gpu.py 2>&1 | tee "$out/pytest.log"
	rc=${PIPESTATUS[0]}
fi
$py userspace/python/bench/bench_vs_torch_mp.py --batch --json "$out/bench.json" "$@" 2>&1 |
	tee "$out/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
echo "# results in $out"
exit $rc
