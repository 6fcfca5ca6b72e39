#!/usr/bin/env bash
# The C++ kernels on aarch64 without Arm hardware: cross-compile them (every csrc/*.cpp but the Python
# bindings) with Debian's aarch64 toolchain, statically, together with the native test programs
# (tests/native/vec_test.cpp: the vector layer; tests/native/kernel_test.cpp, when present: the kernels
# against a float64 reference and the scalar ISA), and run those under qemu-user (NEON and scalar).
# Then the same two programs built natively on this x86-64 machine (AVX-512 / AVX2 / scalar, whichever
# the CPU has). A fixed budget: each program run is capped (ARM_TEST_TIMEOUT seconds, default 240).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${ARM_TEST_TIMEOUT:-240}

need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "arm: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

kernels=()
for src in csrc/*.cpp; do [ "$src" = csrc/bindings.cpp ] || kernels+=("$src"); done
vec_srcs=(tests/native/vec_test.cpp tests/native/vec_isa_*.cpp)
kernel_test=tests/native/kernel_test.cpp

# ISA flags for one source on x86-64 (chosen by its name: *avx512* / *avx2*); none on aarch64, where
# NEON is part of the baseline and the x86 translation units compile to nothing.
isa_flags() {  # arch file
  [ "$1" = x86_64 ] || return 0
  case "$(basename "$2")" in
    *avx512*) echo "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c" ;;
    *avx2*) echo "-mavx2 -mfma -mf16c" ;;
  esac
}

# build arch compiler out link-flags: objects of every source (two compiles at a time), then the programs.
build() {
  local arch=$1 cxx=$2 out=$3 ldflags=$4
  rm -rf "$out" && mkdir -p "$out"
  local srcs=("${kernels[@]}" "${vec_srcs[@]}") objs=() pids=() src obj
  if [ -f "$kernel_test" ]; then srcs+=("$kernel_test"); fi
  for src in "${srcs[@]}"; do
    obj="$out/$(basename "$src" .cpp).o"
    # shellcheck disable=SC2046
    "$cxx" -O2 -std=c++17 -pthread $(isa_flags "$arch" "$src") -c "$src" -o "$obj" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  local vec_objs=() kern_objs=()
  for src in "${vec_srcs[@]}"; do vec_objs+=("$out/$(basename "$src" .cpp).o"); done
  for src in "${kernels[@]}"; do kern_objs+=("$out/$(basename "$src" .cpp).o"); done
  "$cxx" -pthread $ldflags "${vec_objs[@]}" -o "$out/vec_test"
  if [ -f "$kernel_test" ]; then
    "$cxx" -pthread $ldflags "$out/kernel_test.o" "${kern_objs[@]}" -o "$out/kernel_test"
  fi
}

# run label command...: the program's output, failing the job on a non-zero exit or the time cap.
run() {
  local label=$1; shift
  echo "arm: $label"
  timeout "$limit" "$@" || { echo "arm: $label FAILED (exit $?)"; exit 1; }
}

start=$SECONDS
build aarch64 aarch64-linux-gnu-g++ build/arm/aarch64 "-static"
echo "arm: aarch64 cross-build of ${#kernels[@]} kernel sources + tests in $((SECONDS - start)) s"
run "vec_test (aarch64, qemu)" qemu-aarch64 build/arm/aarch64/vec_test
if [ -f "$kernel_test" ]; then run "kernel_test (aarch64, qemu)" qemu-aarch64 build/arm/aarch64/kernel_test; fi

case "$(uname -m)" in
  x86_64|amd64)
    build x86_64 "${CXX:-g++}" build/arm/x86_64 ""
    run "vec_test (x86_64, native)" build/arm/x86_64/vec_test
    if [ -f "$kernel_test" ]; then run "kernel_test (x86_64, native)" build/arm/x86_64/kernel_test; fi
    ;;
esac
echo "arm: all native tests passed in $((SECONDS - start)) s"
