// <immintrin.h> for a kernel .cc file, with GCC 12's warnings about its own AVX-512 intrinsics
// silenced for the rest of that file: the reduce, extract and shuffle helpers build vectors from
// _mm*_undefined_*(), and GCC reports them "(maybe) used uninitialized" wherever they are inlined
// (hundreds of lines in a CI log); they are never read. Include it from .cc files only, before
// any other header that includes <immintrin.h> (cpu_relax.h, transpose16.h): the pragmas hold from
// there to the end of the translation unit (headers push and pop their own, as transpose16.h
// does). x86 only, under the including file's `#if defined(__x86_64__)`.
#pragma once

#if !defined(__clang__)  // clang has no -Wmaybe-uninitialized (and warns about the name), nor the false positive
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
