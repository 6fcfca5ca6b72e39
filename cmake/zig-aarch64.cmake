# CMake toolchain file: cross-compile the extension for aarch64 Linux, glibc >= 2.28 (manylinux_2_28_aarch64), with
# zig's clang on any build machine. See cmake/zig.cmake and README.md ("Wheels").
#
# The Python headers are the build Python's (same version; CPython's headers do not differ between x86_64 and aarch64
# Linux: both are LP64, little-endian). The build Python cannot report the target's extension suffix, so pybind11 is
# told this is a cross build and takes the suffix from scikit-build-core's SKBUILD_SOABI, which follows
# SETUPTOOLS_EXT_SUFFIX; the wheel's platform tag follows _PYTHON_HOST_PLATFORM. Set both, e.g. for CPython 3.11:
#   _PYTHON_HOST_PLATFORM=linux-aarch64 SETUPTOOLS_EXT_SUFFIX=.cpython-311-aarch64-linux-gnu.so
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(PYBIND11_USE_CROSSCOMPILING ON)
set(SSM_ZIG_TARGET aarch64-linux-gnu.2.28)
include("${CMAKE_CURRENT_LIST_DIR}/zig.cmake")
