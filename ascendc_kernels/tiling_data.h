// Tiling structures shared by the host code that launches the AscendC kernels
// and the kernels themselves. Plain integers only: the host writes one of these
// into device memory and the kernel copies it out at its start.
#pragma once

#include <cstdint>

// Element types, as stored in the `dtype` fields below.
constexpr uint32_t kBitcpmFloat32 = 0;
constexpr uint32_t kBitcpmFloat16 = 1;
constexpr uint32_t kBitcpmBFloat16 = 2;
constexpr uint32_t kBitcpmInt8 = 3;
constexpr uint32_t kBitcpmInt32 = 4;

// Split of the work items (groups or rows) of a launch over cores. Blocks
// with index < extraItems take itemsPerCore + 1 items, the others
// itemsPerCore, and blocks at or past usedCores take none.
struct BlockSplit {
    uint64_t itemsPerCore;
    uint32_t extraItems;
    uint32_t usedCores;
};

// ternary_quantize modes.
constexpr uint32_t kQuantizeFromGroup = 0;  // scale = max(mean|W_group|, eps), then codes
constexpr uint32_t kQuantizeAbsSum = 1;     // only write sum |W_group| per group (first pass of per-tensor)
constexpr uint32_t kQuantizeGivenScale = 2; // codes with the single scale already in scales[0]

struct TernaryQuantizeTiling {
    uint32_t dtype;        // weight element type
    uint32_t mode;         // kQuantize*
    uint32_t groupLen;     // elements per group; groups are contiguous in memory
    uint32_t tileLen;      // elements per Unified Buffer tile, a multiple of 256
    uint64_t numGroups;
    BlockSplit split;      // groups per core
    uint32_t reduceTmpLen; // floats in the ReduceSum workspace
    float eps;
    float meanDivisor;     // number of elements the mean divides by
    uint32_t reserved;
};

// ternary_dequantize scale modes.
constexpr uint32_t kDequantizeCodesOnly = 0;   // out = Q, the codes as numbers
constexpr uint32_t kDequantizePerGroup = 1;    // out = Q * scales[group]
constexpr uint32_t kDequantizeSharedScale = 2; // out = Q * scales[0]

struct TernaryDequantizeTiling {
    uint32_t outDtype;
    uint32_t scaleMode; // kDequantize*
    uint32_t groupLen;
    uint32_t tileLen;
    uint64_t numGroups;
    BlockSplit split;
};

struct ActQuantizeTiling {
    uint32_t dtype;     // activation element type
    uint32_t rowLen;    // K
    uint32_t tileLen;
    uint32_t reduceTmpLen; // floats in the ReduceMax workspace
    uint64_t numRows;   // M
    BlockSplit split;   // rows per core
    float eps;
    uint32_t reserved;
};

// linear_epilogue flags.
constexpr uint32_t kEpilogueColScale = 1; // multiply column n by colScale[n]
constexpr uint32_t kEpilogueRowDiv = 2;   // divide row m by rowDivisor[m]
constexpr uint32_t kEpilogueBias = 4;     // add bias[n] (float32)

struct LinearEpilogueTiling {
    uint32_t inDtype;
    uint32_t outDtype;
    uint32_t flags;
    uint32_t tileLen;
    uint64_t numRows; // M
    uint32_t numCols; // N
    uint32_t reserved;
    BlockSplit split; // rows per core
};

// Header of the ternary_matmul tiling; the CANN TCubeTiling follows it.
struct TernaryMatmulHeader {
    uint32_t dtype;      // element type of A and B (float32, float16, bfloat16 or int8)
    uint32_t transposeB; // 1: B is stored (N, K); 0: B is stored (K, N)
    uint32_t reserved[6];
};
