// <immintrin.h> for a kernel .cc file, with GCC 12's warnings about its own AVX-512 intrinsics
// silenced for the rest of that file: the reduce, extract and shuffle helpers build vectors from
// _mm*_undefined_*(), and GCC reports them "(maybe) used uninitialized" wherever they are inlined
// (hundreds of lines in a CI log); they are never read. Include it from .cc files only (the
// pragmas hold to the end of the translation unit; headers push and pop their own, as
// transpose16.h does), and only on x86 (under the including file's
// `#if defined(__x86_64__)`).
#pragma once

#if !defined(__clang__)  // clang has no -Wmaybe-uninitialized (and warns about the name)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
