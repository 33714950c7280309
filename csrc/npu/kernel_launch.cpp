// Kernel launches through the aclrtlaunch_<kernel>.h headers that CANN's
// ascendc_library generates (CANN 8.x ascendc.cmake, and CANN 9's ASC package
// with ENABLE_ACLRT_LAUNCH). ACLRT_LAUNCH_KERNEL returns 0 on success.
//
// NOTE: never compiled here (no CANN toolkit on the development machine);
// the macro usage follows the Ascend samples' kernel-direct-call examples.
#include "kernel_launch.h"

#include <stdexcept>
#include <string>

#include "aclrtlaunch_act_quantize.h"
#include "aclrtlaunch_linear_epilogue.h"
#include "aclrtlaunch_ternary_dequantize.h"
#include "aclrtlaunch_ternary_matmul.h"
#include "aclrtlaunch_ternary_quantize.h"

namespace bitcpm_npu {
namespace {

void CheckLaunch(uint32_t status, const char* kernel, uint32_t blockDim)
{
    if (status != 0) {
        throw std::runtime_error(std::string("launching AscendC kernel ") + kernel + " on " +
                                 std::to_string(blockDim) + " cores failed with ACL error " +
                                 std::to_string(status));
    }
}

}  // namespace

void LaunchTernaryQuantize(uint32_t blockDim, void* stream, void* w, void* codes, void* scales, void* tiling)
{
    uint32_t status = ACLRT_LAUNCH_KERNEL(ternary_quantize)(blockDim, stream, w, codes, scales, tiling);
    CheckLaunch(status, "ternary_quantize", blockDim);
}

void LaunchTernaryDequantize(uint32_t blockDim, void* stream, void* codes, void* scales, void* out, void* tiling)
{
    uint32_t status = ACLRT_LAUNCH_KERNEL(ternary_dequantize)(blockDim, stream, codes, scales, out, tiling);
    CheckLaunch(status, "ternary_dequantize", blockDim);
}

void LaunchActQuantize(uint32_t blockDim, void* stream, void* x, void* codes, void* rowScale, void* tiling)
{
    uint32_t status = ACLRT_LAUNCH_KERNEL(act_quantize)(blockDim, stream, x, codes, rowScale, tiling);
    CheckLaunch(status, "act_quantize", blockDim);
}

void LaunchLinearEpilogue(uint32_t blockDim, void* stream, void* acc, void* colScale, void* rowDivisor, void* bias,
                          void* out, void* tiling)
{
    uint32_t status =
        ACLRT_LAUNCH_KERNEL(linear_epilogue)(blockDim, stream, acc, colScale, rowDivisor, bias, out, tiling);
    CheckLaunch(status, "linear_epilogue", blockDim);
}

void LaunchTernaryMatmul(uint32_t blockDim, void* stream, void* a, void* b, void* c, void* workspace, void* tiling)
{
    uint32_t status = ACLRT_LAUNCH_KERNEL(ternary_matmul)(blockDim, stream, a, b, c, workspace, tiling);
    CheckLaunch(status, "ternary_matmul", blockDim);
}

}  // namespace bitcpm_npu
