// Host-side tiling: one function per kernel decides how a launch splits over
// cores and how large a Unified Buffer tile is. Shared by the torch wrappers
// in csrc/npu and by the host runs of the kernels in the tests.
//
// Atlas A2 numbers used below (AscendC documentation, asc-devkit):
//   Unified Buffer 192 KB = 196608 bytes per vector core;
//   moves and local tensor addresses 32-byte aligned;
//   one vector repeat covers 256 bytes (64 float32 or 128 half elements).
// Every tile length is a multiple of 256 elements, so every tile of every
// element type used here (1 to 4 bytes) starts 32-byte aligned and fills
// whole repeats. Only the last tile of a group or row is shorter.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "tiling_data.h"

namespace bitcpm_tiling {

constexpr uint32_t kUbBytes = 196608;
constexpr uint32_t kTileQuantum = 256;
// Unified Buffer kept for the reduce workspaces and the 32-byte scalar
// buffers. The ReduceSum workspace of a 12288-element float tile is
// ceil(12288 / 64) = 192 floats = 768 bytes and the ReduceMax workspace is
// (2 x 192) + 16 floats = 1600 bytes, so 2048 bytes cover both with the
// scalar buffers; the host runs of the kernels check this.
constexpr uint32_t kFixedReserveBytes = 2048;

inline uint32_t ElementBytes(uint32_t dtype)
{
    switch (dtype) {
        case kBitcpmFloat32: return 4;
        case kBitcpmFloat16: return 2;
        case kBitcpmBFloat16: return 2;
        case kBitcpmInt8: return 1;
        case kBitcpmInt32: return 4;
        default: break;
    }
    throw std::invalid_argument("unknown bitcpm element type " + std::to_string(dtype));
}

inline uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Largest multiple of 256 elements whose per-element buffers fit next to the
// fixed reserve; `tileCap` > 0 lowers it (tests use it to force the tiled
// paths on small shapes).
inline uint32_t TileLenFor(uint32_t bytesPerElement, uint32_t tileCap)
{
    uint32_t tile = (kUbBytes - kFixedReserveBytes) / bytesPerElement / kTileQuantum * kTileQuantum;
    if (tileCap > 0 && tileCap < tile) {
        tile = (tileCap + kTileQuantum - 1) / kTileQuantum * kTileQuantum;
    }
    return tile;
}

// `numItems` items over at most `coreNum` cores, as even as possible.
inline BlockSplit SplitItems(uint64_t numItems, uint32_t coreNum)
{
    if (coreNum == 0) {
        throw std::invalid_argument("core count must be positive");
    }
    BlockSplit split{};
    split.usedCores = static_cast<uint32_t>(numItems < coreNum ? numItems : coreNum);
    if (split.usedCores == 0) {
        return split;
    }
    split.itemsPerCore = numItems / split.usedCores;
    split.extraItems = static_cast<uint32_t>(numItems % split.usedCores);
    return split;
}

// ReduceSum workspace for `count` float elements: one float per 256-byte
// repeat, rounded up to whole 32-byte blocks.
inline uint32_t ReduceSumTmpFloats(uint32_t count)
{
    uint64_t repeats = count < 64 ? 1 : CeilDiv(count, 64);
    return static_cast<uint32_t>(CeilDiv(repeats, 8) * 8);
}

// ReduceMax workspace for `count` float elements (value and index per repeat,
// two rounds), from the AscendC ReduceMax example.
inline uint32_t ReduceMaxTmpFloats(uint32_t count)
{
    uint64_t repeats = CeilDiv(count, 64);
    uint64_t firstOut = repeats * 2;
    uint64_t secondStart = CeilDiv(firstOut, 8) * 8;
    uint64_t secondOut = CeilDiv(firstOut, 64) * 2;
    return static_cast<uint32_t>(secondStart + CeilDiv(secondOut, 8) * 8);
}

// ternary_quantize. Unified Buffer bytes per tile element:
//   inQueue 2 x sizeof(W) + outQueue 2 x 1 + floatBuf 4 + divBuf 4 + halfBuf 2
//   = 20 for float32 weights (194560 / 20 = tile 9728), 16 for half/bfloat16
//   (194560 / 16 = 12160, rounded down to tile 12032).
// A group of up to tileLen elements is read once; a longer group is read
// twice (sum, then codes).
inline TernaryQuantizeTiling TernaryQuantizeTilingFor(uint32_t dtype, uint64_t numGroups, uint32_t groupLen,
                                                      uint32_t mode, float eps, uint32_t coreNum,
                                                      uint32_t tileCap = 0)
{
    if (groupLen == 0) {
        throw std::invalid_argument("ternary_quantize: group length must be positive");
    }
    uint32_t bytesPerElement = 2 * ElementBytes(dtype) + 2 * 1 + 4 + 4 + 2;
    TernaryQuantizeTiling tiling{};
    tiling.dtype = dtype;
    tiling.mode = mode;
    tiling.groupLen = groupLen;
    tiling.tileLen = TileLenFor(bytesPerElement, tileCap);
    tiling.numGroups = numGroups;
    tiling.split = SplitItems(numGroups, coreNum);
    tiling.reduceTmpLen = ReduceSumTmpFloats(tiling.tileLen);
    tiling.eps = eps;
    tiling.meanDivisor = static_cast<float>(groupLen);
    return tiling;
}

// ternary_dequantize. Bytes per tile element:
//   inQueue 2 x 1 + halfBuf 2 + floatBuf 4 + outQueue 2 x sizeof(out)
//   = 16 for float32 output (tile 12032), 12 for half/bfloat16 (tile 16128).
inline TernaryDequantizeTiling TernaryDequantizeTilingFor(uint32_t outDtype, uint64_t numGroups, uint32_t groupLen,
                                                          uint32_t scaleMode, uint32_t coreNum, uint32_t tileCap = 0)
{
    if (groupLen == 0) {
        throw std::invalid_argument("ternary_dequantize: group length must be positive");
    }
    uint32_t bytesPerElement = 2 * 1 + 2 + 4 + 2 * ElementBytes(outDtype);
    TernaryDequantizeTiling tiling{};
    tiling.outDtype = outDtype;
    tiling.scaleMode = scaleMode;
    tiling.groupLen = groupLen;
    tiling.tileLen = TileLenFor(bytesPerElement, tileCap);
    tiling.numGroups = numGroups;
    tiling.split = SplitItems(numGroups, coreNum);
    return tiling;
}

// act_quantize. Bytes per tile element, as for ternary_quantize:
//   inQueue 2 x sizeof(x) + outQueue 2 x 1 + floatBuf 4 + absBuf 4 + halfBuf 2.
// A row of up to tileLen elements is read once, a longer row twice.
inline ActQuantizeTiling ActQuantizeTilingFor(uint32_t dtype, uint64_t numRows, uint32_t rowLen, float eps,
                                              uint32_t coreNum, uint32_t tileCap = 0)
{
    if (rowLen == 0) {
        throw std::invalid_argument("act_quantize: row length must be positive");
    }
    uint32_t bytesPerElement = 2 * ElementBytes(dtype) + 2 * 1 + 4 + 4 + 2;
    ActQuantizeTiling tiling{};
    tiling.dtype = dtype;
    tiling.rowLen = rowLen;
    tiling.tileLen = TileLenFor(bytesPerElement, tileCap);
    tiling.reduceTmpLen = ReduceMaxTmpFloats(tiling.tileLen);
    tiling.numRows = numRows;
    tiling.split = SplitItems(numRows, coreNum);
    tiling.eps = eps;
    return tiling;
}

// linear_epilogue. Bytes per tile element:
//   inQueue 2 x sizeof(acc) + floatBuf 4 + colBuf 4 + biasBuf 4 + rowBuf 4
//   + outQueue 2 x sizeof(out) = at most 32 (tile 6080 -> 5888).
inline LinearEpilogueTiling LinearEpilogueTilingFor(uint32_t inDtype, uint32_t outDtype, uint32_t flags,
                                                    uint64_t numRows, uint32_t numCols, uint32_t coreNum,
                                                    uint32_t tileCap = 0)
{
    if (numCols == 0) {
        throw std::invalid_argument("linear_epilogue: column count must be positive");
    }
    uint32_t bytesPerElement = 2 * ElementBytes(inDtype) + 4 * 4 + 2 * ElementBytes(outDtype);
    LinearEpilogueTiling tiling{};
    tiling.inDtype = inDtype;
    tiling.outDtype = outDtype;
    tiling.flags = flags;
    tiling.tileLen = TileLenFor(bytesPerElement, tileCap);
    tiling.numRows = numRows;
    tiling.numCols = numCols;
    tiling.split = SplitItems(numRows, coreNum);
    return tiling;
}

// Multi-core split of C (M x N) for ternary_matmul when CANN's
// matmul_tiling::MultiCoreMatmulTiling is not available (host runs). The
// kernel reads M, N, Ka, Kb, singleCoreM, singleCoreN, singleCoreK and
// isBias; base block sizes are chosen to fit Atlas A2's L0A/L0B (64 KB, with
// double buffering) and L0C (128 KB, float or int32 accumulators):
//   baseM x baseK x sizeof(A) x 2 <= 64 KB, baseN x baseK x sizeof(B) x 2 <= 64 KB,
//   baseM x baseN x 4 <= 128 KB  ->  baseM 128, baseN 256 and baseK x sizeof(A) = 128 bytes
//   (baseK 32 for float32, 64 for half/bfloat16, 128 for int8).
struct CubeSplit {
    int32_t usedCoreNum;
    int32_t singleCoreM;
    int32_t singleCoreN;
    int32_t singleCoreK;
    int32_t baseM;
    int32_t baseN;
    int32_t baseK;
};

inline CubeSplit TernaryMatmulSplitFor(uint32_t dtype, int32_t m, int32_t n, int32_t k, uint32_t coreNum)
{
    if (m <= 0 || n <= 0 || k <= 0) {
        throw std::invalid_argument("ternary_matmul: M, N and K must be positive, got " + std::to_string(m) + ", " +
                                    std::to_string(n) + ", " + std::to_string(k));
    }
    // Split N first (the weight's rows), in multiples of 16 (one cube fractal).
    uint64_t nBlocks = CeilDiv(static_cast<uint64_t>(n), 16);
    nBlocks = nBlocks < coreNum ? nBlocks : coreNum;
    int32_t singleN = static_cast<int32_t>(CeilDiv(CeilDiv(n, nBlocks), 16) * 16);
    nBlocks = CeilDiv(n, singleN);
    uint64_t mBudget = coreNum / nBlocks;
    uint64_t mBlocks = CeilDiv(static_cast<uint64_t>(m), 16);
    mBlocks = mBlocks < mBudget ? mBlocks : mBudget;
    mBlocks = mBlocks == 0 ? 1 : mBlocks;
    int32_t singleM = static_cast<int32_t>(CeilDiv(CeilDiv(m, mBlocks), 16) * 16);
    mBlocks = CeilDiv(m, singleM);

    CubeSplit split{};
    split.usedCoreNum = static_cast<int32_t>(mBlocks * nBlocks);
    split.singleCoreM = singleM;
    split.singleCoreN = singleN;
    split.singleCoreK = k;
    split.baseM = 128;
    split.baseN = 256;
    split.baseK = static_cast<int32_t>(64 / ElementBytes(dtype) * 2);
    return split;
}

}  // namespace bitcpm_tiling
