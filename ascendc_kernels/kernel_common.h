// Helpers shared by the AscendC kernels (device side only).
#pragma once

#include "kernel_operator.h"
#include "tiling_data.h"

// Type equality without <type_traits>, which device compilers need not ship.
template <typename A, typename B>
struct IsSameType {
    static constexpr bool value = false;
};
template <typename A>
struct IsSameType<A, A> {
    static constexpr bool value = true;
};

// Copy a tiling structure out of global memory, one 32-bit word at a time.
template <typename Tiling>
__aicore__ inline void LoadTiling(Tiling& tiling, GM_ADDR tilingGm)
{
    uint32_t* dst = reinterpret_cast<uint32_t*>(&tiling);
    __gm__ uint32_t* src = reinterpret_cast<__gm__ uint32_t*>(tilingGm);
    for (uint32_t i = 0; i < sizeof(Tiling) / sizeof(uint32_t); ++i) {
        dst[i] = src[i];
    }
}

// First item and item count of block `blockIdx`.
__aicore__ inline void BlockItems(const BlockSplit& split, uint64_t blockIdx, uint64_t& first, uint64_t& count)
{
    if (blockIdx >= split.usedCores) {
        first = 0;
        count = 0;
        return;
    }
    if (blockIdx < split.extraItems) {
        count = split.itemsPerCore + 1;
        first = blockIdx * count;
    } else {
        count = split.itemsPerCore;
        first = split.extraItems * (split.itemsPerCore + 1) + (blockIdx - split.extraItems) * split.itemsPerCore;
    }
}
