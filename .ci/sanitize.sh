#!/usr/bin/env bash
# The C++ extension built with AddressSanitizer + UndefinedBehaviorSanitizer, running the C++-backend tests.
# Any report fails the job (UBSan does not recover; ASan aborts). Leak checking is off: CPython and torch
# keep allocations until exit by design; the RSS tests are left out (ASan's shadow memory and quarantine are
# resident too). Usage: bash .ci/sanitize.sh [pytest -k expression]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
venv=/tmp/ssm-asan-venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
"$venv/bin/pip" install -q ".[test]" \
  -Cbuild-dir=build/asan -Ccmake.build-type=RelWithDebInfo \
  "-Ccmake.define.CMAKE_CXX_FLAGS=$flags" "-Ccmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined"
so=$(cd /tmp && "$venv/bin/python" -c "import importlib.util as u; print(u.find_spec('stablesoftmax._C').origin)" 2>/dev/null || true)
[ -n "$so" ] || { echo "sanitize: the extension was not installed"; exit 1; }
ldd "$so" | grep libasan >/dev/null || { echo "sanitize: $so is not an ASan build"; exit 1; }
preload="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
# Run from outside the source tree so the installed (sanitized) package is the one imported.
cd /tmp
LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:allocator_may_return_null=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$repo" -c "$repo/pyproject.toml" \
  "$repo/tests/test_softmax.py" "$repo/tests/test_sampling.py" "$repo/tests/test_multinomial.py" \
  "$repo/tests/test_fuzz.py" "$repo/tests/test_sampling_edges.py" "$repo/tests/test_softmax_accuracy.py" \
  "$repo/tests/test_softmax_layout.py" "$repo/tests/test_threads.py" -m "not slow" \
  -k "${1:-(cpp or test_threads) and not memory and not scratch and not released}"
echo "sanitize: no ASan / UBSan report"
