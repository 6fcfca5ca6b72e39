# CMake toolchain file: the extension for x86_64 Linux, glibc >= 2.28 (manylinux_2_28_x86_64), built with zig's clang.
# A native build on an x86_64 machine (CMAKE_SYSTEM_NAME is left alone, so CMake and pybind11 do not treat it as a cross
# build and take the extension suffix from the running Python). See cmake/zig.cmake and README.md ("Wheels").
set(SSM_ZIG_TARGET x86_64-linux-gnu.2.28)
include("${CMAKE_CURRENT_LIST_DIR}/zig.cmake")
