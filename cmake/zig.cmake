# Shared part of the zig toolchain files (zig-x86_64.cmake, zig-aarch64.cmake); not used on its own.
#
# zig's clang (`zig cc` / `zig c++`) links against stub libraries of the glibc version named in the target triple
# (here 2.28, manylinux_2_28 = torch's own floor) and links its own libc++/libc++abi/libunwind statically, so the
# extension needs neither a new GLIBC nor any GLIBCXX: `auditwheel repair --plat manylinux_2_28_<arch>` accepts it
# without a manylinux container. The including file sets SSM_ZIG_TARGET (an `<arch>-linux-gnu.<glibc>` triple).
#
# Where zig comes from, first found wins: the ZIG environment variable or -DZIG=<path>, `zig` on PATH, or the
# binary inside the `ziglang` PyPI package of the first python3 on PATH (`pip install ziglang`).
if(NOT SSM_ZIG_TARGET)
  message(FATAL_ERROR "cmake/zig.cmake: include it from cmake/zig-<arch>.cmake, which sets SSM_ZIG_TARGET")
endif()

if(NOT ZIG AND DEFINED ENV{ZIG} AND NOT "$ENV{ZIG}" STREQUAL "")
  set(ZIG "$ENV{ZIG}")
endif()
if(NOT ZIG)
  find_program(_ssm_zig_on_path zig)
  if(_ssm_zig_on_path)
    set(ZIG "${_ssm_zig_on_path}")
  endif()
endif()
if(NOT ZIG)
  find_program(_ssm_python3 NAMES python3 python)
  if(_ssm_python3)
    execute_process(
      COMMAND "${_ssm_python3}" -c "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))"
      OUTPUT_VARIABLE _ssm_zig_py OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _ssm_zig_rc)
    if(_ssm_zig_rc EQUAL 0 AND EXISTS "${_ssm_zig_py}")
      set(ZIG "${_ssm_zig_py}")
    endif()
  endif()
endif()
if(NOT ZIG OR NOT EXISTS "${ZIG}")
  message(FATAL_ERROR "cmake/zig.cmake: no zig found (ZIG='${ZIG}'). `pip install ziglang` and set "
                      "ZIG=$(python -c \"import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))\")")
endif()
set(ZIG "${ZIG}" CACHE FILEPATH "zig binary used as the C/C++ compiler" FORCE)
# try_compile projects (compiler checks, FindThreads) re-read this file: hand them the same zig.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ZIG SSM_ZIG_TARGET)

# A compiler given as a list: the program, then its mandatory first argument. CMake passes the target to clang as
# --target=<triple>, which zig reads (glibc version included). An explicit target also makes zig generate code for
# the architecture's baseline CPU, never the build machine's: the ISA-specific files get their -m flags from CMakeLists.txt.
set(CMAKE_C_COMPILER "${ZIG}" cc)
set(CMAKE_CXX_COMPILER "${ZIG}" c++)
set(CMAKE_C_COMPILER_TARGET "${SSM_ZIG_TARGET}")
set(CMAKE_CXX_COMPILER_TARGET "${SSM_ZIG_TARGET}")
