#!/usr/bin/env bash
# libFuzzer over the C++ kernels' entry points (tests/native/fuzz_kernels.cpp), with ASan + UBSan,
# for a fixed time budget, starting from the saved corpus. Usage: bash .ci/fuzz.sh [seconds] (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-120}
command -v clang++ >/dev/null || { apt-get update -qq && apt-get install -y -qq clang >/dev/null; }
out=build/fuzz
mkdir -p "$out"
san="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
flags="-std=c++17 -O1 -g -pthread $san"
# Every kernel source but the Python bindings, each ISA's file with its flags (as CMakeLists.txt).
objs=()
for src in csrc/*.cpp; do
  name=$(basename "$src" .cpp)
  [ "$name" = bindings ] && continue
  isa_flags=""
  case "$(uname -m):$name" in
    x86_64:isa_avx2) isa_flags="-mavx2 -mfma -mf16c" ;;
    x86_64:isa_avx512) isa_flags="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c" ;;
  esac
  clang++ $flags $isa_flags -c "$src" -o "$out/$name.o" & objs+=("$out/$name.o")
done
wait
clang++ $flags tests/native/fuzz_kernels.cpp "${objs[@]}" -o "$out/fuzz_kernels"
# Work on a copy of the saved corpus; new inputs found stay in build/fuzz/corpus (merge by hand if wanted).
rm -rf "$out/corpus" && cp -r tests/native/corpus "$out/corpus"
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
  "$out/fuzz_kernels" "$out/corpus" -max_total_time="$budget" -max_len=4096 -timeout=20 -rss_limit_mb=4096 \
  -print_final_stats=1 2>&1 | tail -n 25
echo "fuzz: ${budget}s without a finding"
