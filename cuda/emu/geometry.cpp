// Prints the launch geometry that the kernels of cuda/fwht.cu are compiled for (their RowCfg / ColCfg constants
// and the shared memory each kernel touches), one line per kernel family and size, for the Rust test
// `cuda_geometry::tests::rust_geometry_matches_the_kernels`, which compares it with the launch geometry of
// src/fwht/cuda_geometry.rs. A mismatch on a GPU would trap (block size) or read past the shared memory.
#define FWHT_EMU
#include "../fwht.cu"

#include <utility>

namespace {

// row <log2 n> <acc bytes> <input bytes> <transposed> <rows per block> <block> <shared bytes>
template <int LOG, typename Acc, int IN, int X> void row() {
    using C = RowCfg<LOG, Acc, IN, X>;
    const bool exchange = C::LOG_W > 0 || C::LANES_IN_SMEM > 0;
    std::printf("row %d %d %d %d %d %d %d\n", LOG, (int)sizeof(Acc), IN, X, C::ROWS, C::BLOCK,
                exchange ? C::ROWS * C::N * (int)sizeof(Acc) : 0);
}

// col <log2 n_hi> <acc bytes> <columns per block> <block> <shared bytes>
template <int A, typename Acc> void col() {
    using C = ColCfg<A>;
    std::printf("col %d %d %d %d %d\n", A, (int)sizeof(Acc), C::NC, C::BLOCK, (1 << A) * C::NC * (int)sizeof(Acc));
}

// fused <A> <acc bytes> <input bytes> <block> <shared bytes> (the item slot, then the row buffer or the tile)
template <int A, typename Acc, int IN> void fused() {
    using R = RowCfg<12, Acc, IN>;
    const int row_bytes = R::N * (int)sizeof(Acc), tile_bytes = (1 << A) * ColCfg<A>::NC * (int)sizeof(Acc);
    std::printf("fused %d %d %d %d %d\n", A, (int)sizeof(Acc), IN, R::BLOCK,
                16 + (row_bytes > tile_bytes ? row_bytes : tile_bytes));
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
