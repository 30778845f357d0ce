// CASCADE_CPU_RELAX(): the spin-wait hint (x86 `pause`, arm64 `yield`), for the loops that wait
// for another thread's task (kernels/thread_team.cc, ParallelTasks in kernels/int8_matmul.cc).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CASCADE_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CASCADE_CPU_RELAX() asm volatile("yield")
#else
#define CASCADE_CPU_RELAX() ((void)0)
#endif
