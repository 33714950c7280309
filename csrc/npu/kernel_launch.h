// Host-side launchers of the AscendC kernels in ascendc_kernels/, one per
// kernel. Each enqueues the kernel on `stream` (an aclrtStream) over
// `blockDim` cores. Every pointer is device memory, `tiling` included.
// They throw std::runtime_error when the runtime refuses the launch.
#pragma once

#include <cstdint>

namespace bitcpm_npu {

void LaunchTernaryQuantize(uint32_t blockDim, void* stream, void* w, void* codes, void* scales, void* tiling);
void LaunchTernaryDequantize(uint32_t blockDim, void* stream, void* codes, void* scales, void* out, void* tiling);
void LaunchActQuantize(uint32_t blockDim, void* stream, void* x, void* codes, void* rowScale, void* tiling);
void LaunchLinearEpilogue(uint32_t blockDim, void* stream, void* acc, void* colScale, void* rowDivisor, void* bias,
                          void* out, void* tiling);
void LaunchTernaryMatmul(uint32_t blockDim, void* stream, void* a, void* b, void* c, void* workspace, void* tiling);

}  // namespace bitcpm_npu
