// The launch geometry that the kernels of cuda/fwht.cu are compiled for, read off their own RowCfg / ColCfg
// constants (include after fwht.cu). The emulated checks launch with it, and geometry.cpp prints it for the
// Rust test that compares it with src/fwht/cuda_geometry.rs, so the shapes live in one place: the kernels.
#pragma once

#include <utility>

struct Geo {
    unsigned rows_per_block, block, smem;
};

// One-pass row kernel for n = 2^LOG (X = 1: the transposed variant): rows per block, threads, and the shared
// memory it touches (only when the row goes through shared memory).
template <int LOG, typename Acc, int IN, int X> constexpr Geo row_geo() {
    using C = RowCfg<LOG, Acc, IN, X>;
    const bool exchange = C::LOG_W > 0 || C::LANES_IN_SMEM > 0;
    return {(unsigned)C::ROWS, (unsigned)C::BLOCK, exchange ? (unsigned)(C::ROWS * C::N * (int)sizeof(Acc)) : 0u};
}

template <typename Acc, int IN, int X, int... L> Geo row_geo_at(unsigned log_n, std::integer_sequence<int, L...>) {
    static constexpr Geo table[] = {row_geo<L, Acc, IN, X>()...};
    return table[log_n];
}

// The same for a log2 n known at run time (0 .. 15).
template <typename Acc, int IN> Geo row_geo(unsigned log_n, bool transposed) {
    return transposed ? row_geo_at<Acc, IN, 1>(log_n, std::make_integer_sequence<int, 16>{})
                      : row_geo_at<Acc, IN, 0>(log_n, std::make_integer_sequence<int, 16>{});
}

// Columns per block of the column kernel for n_hi = 2^log_hi (1 .. 10).
template <int... A> unsigned col_nc_at(unsigned log_hi, std::integer_sequence<int, A...>) {
    static constexpr unsigned table[] = {0u, (unsigned)ColCfg<A + 1>::NC...};
    return table[log_hi];
}
inline unsigned col_nc(unsigned log_hi) { return col_nc_at(log_hi, std::make_integer_sequence<int, 10>{}); }

// Shared memory of the persistent kernel for n = 2^12 * 2^a: the item slot, then the row buffer or the tile.
template <typename Acc, int IN> unsigned fused_smem(unsigned a) {
    const unsigned row = row_geo<Acc, IN>(12, false).smem, tile = (1u << a) * col_nc(a) * (unsigned)sizeof(Acc);
    return 16 + (row > tile ? row : tile);
}
