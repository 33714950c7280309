// C entry points that run the AscendC kernels on the host: each builds the
// tiling with the same host_tiling.h function the NPU wrappers use, then runs
// every block index of the launch grid through ascendc_host::LaunchGrid.
// Loaded with ctypes by tests/test_ascendc_*.py.
//
// Every entry point returns 0 on success. On failure it returns 1 and writes
// the message (kernel, block, call and numbers for a violated Atlas A2 limit)
// into `err`.
#include <cstdio>
#include <cstring>
#include <exception>
#include <vector>

#include "host_tiling.h"
#include "kernel_operator.h"
#include "kernel_tiling/kernel_tiling.h"
#include "tiling_data.h"

extern "C" void ternary_quantize(GM_ADDR w, GM_ADDR codes, GM_ADDR scales, GM_ADDR tilingGm);
extern "C" void ternary_dequantize(GM_ADDR codes, GM_ADDR scales, GM_ADDR out, GM_ADDR tilingGm);
extern "C" void act_quantize(GM_ADDR x, GM_ADDR codes, GM_ADDR rowScale, GM_ADDR tilingGm);
extern "C" void linear_epilogue(GM_ADDR acc, GM_ADDR colScale, GM_ADDR rowDivisor, GM_ADDR bias, GM_ADDR out,
                                GM_ADDR tilingGm);
extern "C" void ternary_matmul(GM_ADDR a, GM_ADDR b, GM_ADDR c, GM_ADDR workspace, GM_ADDR tilingGm);

namespace {

template <typename Body>
int Guarded(char* err, size_t errLen, Body body)
{
    try {
        body();
        return 0;
    } catch (const std::exception& error) {
        std::snprintf(err, errLen, "%s", error.what());
        return 1;
    }
}

GM_ADDR Bytes(void* pointer) { return reinterpret_cast<GM_ADDR>(pointer); }

}  // namespace

extern "C" int bitcpm_host_ternary_quantize(void* w, uint32_t dtype, uint64_t numGroups, uint32_t groupLen,
                                            uint32_t mode, float eps, void* codes, void* scales, uint32_t coreNum,
                                            uint32_t tileCap, uint32_t* usedCores, char* err, size_t errLen)
{
    return Guarded(err, errLen, [&]() {
        TernaryQuantizeTiling tiling =
            bitcpm_tiling::TernaryQuantizeTilingFor(dtype, numGroups, groupLen, mode, eps, coreNum, tileCap);
        *usedCores = tiling.split.usedCores;
        ascendc_host::LaunchGrid("ternary_quantize", tiling.split.usedCores, [&]() {
            ternary_quantize(Bytes(w), Bytes(codes), Bytes(scales), Bytes(&tiling));
        });
    });
}

extern "C" int bitcpm_host_ternary_dequantize(void* codes, void* scales, void* out, uint32_t outDtype,
                                              uint64_t numGroups, uint32_t groupLen, uint32_t scaleMode,
                                              uint32_t coreNum, uint32_t tileCap, uint32_t* usedCores, char* err,
                                              size_t errLen)
{
    return Guarded(err, errLen, [&]() {
        TernaryDequantizeTiling tiling =
            bitcpm_tiling::TernaryDequantizeTilingFor(outDtype, numGroups, groupLen, scaleMode, coreNum, tileCap);
        *usedCores = tiling.split.usedCores;
        ascendc_host::LaunchGrid("ternary_dequantize", tiling.split.usedCores, [&]() {
            ternary_dequantize(Bytes(codes), Bytes(scales), Bytes(out), Bytes(&tiling));
        });
    });
}

extern "C" int bitcpm_host_act_quantize(void* x, uint32_t dtype, uint64_t numRows, uint32_t rowLen, float eps,
                                        void* codes, void* rowScale, uint32_t coreNum, uint32_t tileCap,
                                        uint32_t* usedCores, char* err, size_t errLen)
{
    return Guarded(err, errLen, [&]() {
        ActQuantizeTiling tiling = bitcpm_tiling::ActQuantizeTilingFor(dtype, numRows, rowLen, eps, coreNum, tileCap);
        *usedCores = tiling.split.usedCores;
        ascendc_host::LaunchGrid("act_quantize", tiling.split.usedCores, [&]() {
            act_quantize(Bytes(x), Bytes(codes), Bytes(rowScale), Bytes(&tiling));
        });
    });
}

extern "C" int bitcpm_host_linear_epilogue(void* acc, void* colScale, void* rowDivisor, void* bias, void* out,
                                           uint32_t inDtype, uint32_t outDtype, uint32_t flags, uint64_t numRows,
                                           uint32_t numCols, uint32_t coreNum, uint32_t tileCap, uint32_t* usedCores,
                                           char* err, size_t errLen)
{
    return Guarded(err, errLen, [&]() {
        LinearEpilogueTiling tiling = bitcpm_tiling::LinearEpilogueTilingFor(inDtype, outDtype, flags, numRows,
                                                                             numCols, coreNum, tileCap);
        *usedCores = tiling.split.usedCores;
        ascendc_host::LaunchGrid("linear_epilogue", tiling.split.usedCores, [&]() {
            linear_epilogue(Bytes(acc), Bytes(colScale), Bytes(rowDivisor), Bytes(bias), Bytes(out), Bytes(&tiling));
        });
    });
}

// The TCubeTiling here comes from bitcpm_tiling::TernaryMatmulSplitFor. On an
// NPU host the wrapper gets it from CANN's matmul_tiling::MultiCoreMatmulTiling.
extern "C" int bitcpm_host_ternary_matmul(void* a, void* b, void* c, uint32_t dtype, int32_t m, int32_t n, int32_t k,
                                          uint32_t transposeB, uint32_t coreNum, uint32_t* usedCores, char* err,
                                          size_t errLen)
{
    return Guarded(err, errLen, [&]() {
        bitcpm_tiling::CubeSplit split = bitcpm_tiling::TernaryMatmulSplitFor(dtype, m, n, k, coreNum);
        struct {
            TernaryMatmulHeader header;
            TCubeTiling cube;
        } tiling{};
        tiling.header.dtype = dtype;
        tiling.header.transposeB = transposeB;
        tiling.cube.usedCoreNum = split.usedCoreNum;
        tiling.cube.M = m;
        tiling.cube.N = n;
        tiling.cube.Ka = k;
        tiling.cube.Kb = k;
        tiling.cube.singleCoreM = split.singleCoreM;
        tiling.cube.singleCoreN = split.singleCoreN;
        tiling.cube.singleCoreK = split.singleCoreK;
        tiling.cube.baseM = split.baseM;
        tiling.cube.baseN = split.baseN;
        tiling.cube.baseK = split.baseK;
        tiling.cube.dbL0A = 2;
        tiling.cube.dbL0B = 2;
        tiling.cube.dbL0C = 1;
        static_assert(sizeof(TernaryMatmulHeader) % 4 == 0, "the header must be whole 32-bit words");
        *usedCores = static_cast<uint32_t>(split.usedCoreNum);

        std::vector<uint8_t> workspace(1024);
        ascendc_host::LaunchGrid("ternary_matmul", static_cast<uint32_t>(split.usedCoreNum), [&]() {
            ternary_matmul(Bytes(a), Bytes(b), Bytes(c), workspace.data(), Bytes(&tiling));
        });
    });
}
