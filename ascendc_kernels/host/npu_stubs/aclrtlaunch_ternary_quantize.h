// Stand-in for the aclrtlaunch_ternary_quantize.h that CANN's ascendc_library generates (compile check only).
#pragma once
#include <cstdint>

#ifndef ACLRT_LAUNCH_KERNEL
#define ACLRT_LAUNCH_KERNEL(kernel) aclrtlaunch_##kernel
#endif

extern "C" uint32_t aclrtlaunch_ternary_quantize(uint32_t blockDim, void* stream, void* arg0, void* arg1, void* arg2, void* arg3);
