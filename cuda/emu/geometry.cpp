// Prints the launch geometry that the kernels of cuda/fwht.cu are compiled for (their RowCfg / ColCfg constants
// and the shared memory each kernel touches), one line per kernel family and size, for the Rust test
// `cuda_geometry::tests::rust_geometry_matches_the_kernels`, which compares it with the launch geometry of
// src/fwht/cuda_geometry.rs. A mismatch on a GPU would trap (block size) or read past the shared memory.
#define FWHT_EMU
#define FWHT_UNTESTED_VARIANTS  // the emulated checks cover the opt-in variants too
#include "../fwht.cu"
#include "kernel_geometry.h"

namespace {

// row <log2 n> <acc bytes> <input bytes> <transposed> <rows per block> <block> <shared bytes>
template <int LOG, typename Acc, int IN, int X> void row() {
    constexpr Geo g = row_geo<LOG, Acc, IN, X>();
    std::printf("row %d %d %d %d %u %u %u\n", LOG, (int)sizeof(Acc), IN, X, g.rows_per_block, g.block, g.smem);
}

// col <log2 n_hi> <acc bytes> <columns per block> <block> <shared bytes>
template <int A, typename Acc> void col() {
    std::printf("col %d %d %u %d %u\n", A, (int)sizeof(Acc), col_nc(A), ColCfg<A>::BLOCK,
                (1u << A) * col_nc(A) * (unsigned)sizeof(Acc));
}

// fused <A> <acc bytes> <input bytes> <block> <shared bytes> (the item slot, then the row buffer or the tile)
template <int A, typename Acc, int IN> void fused() {
    std::printf("fused %d %d %d %d %u\n", A, (int)sizeof(Acc), IN, RowCfg<12, Acc, IN>::BLOCK, fused_smem<Acc, IN>(A));
}

template <int... L> void rows(std::integer_sequence<int, L...>) {
    (row<L, float, 4, 0>(), ...);
    (row<L, float, 2, 0>(), ...);
    (row<L, double, 8, 0>(), ...);
    (row<L, float, 4, 1>(), ...);
    (row<L, float, 2, 1>(), ...);
}
template <int... A> void cols(std::integer_sequence<int, A...>) {
    (col<A + 1, float>(), ...);
    (col<A + 1, double>(), ...);
}
template <int... A> void fuseds(std::integer_sequence<int, A...>) {
    (fused<A + 1, float, 4>(), ...);
    (fused<A + 1, float, 2>(), ...);
    (fused<A + 1, double, 8>(), ...);
}

}  // namespace

int main() {
    rows(std::make_integer_sequence<int, 16>{});
    cols(std::make_integer_sequence<int, 10>{});
    fuseds(std::make_integer_sequence<int, 8>{});
    return 0;
}
