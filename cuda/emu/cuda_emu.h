// A small CPU emulation of the CUDA features that cuda/fwht.cu uses, so that the kernels' logic (indexing,
// butterfly order, shuffles, shared-memory exchanges, barriers, the persistent kernel's work queue and its
// waits) is tested on machines without a GPU. Written for this crate; not a general CUDA emulator.
//
// Every CUDA thread is a fiber on one OS thread (a ten-instruction stack switch on x86-64, ucontext elsewhere). A fiber runs until it waits at a barrier (block,
// warp or the two halves of a shuffle) or sleeps in a spin loop (__nanosleep), then the scheduler resumes the
// next one, round robin. The blocks of one "wave" run together, so that blocks of a persistent kernel really
// do wait on each other. Memory is plain host memory: no caches, so the test checks the algorithm and the
// synchronisation protocol, not memory-model subtleties (fences, cache operators), which are read in review.
// Shared-memory accesses made through sm_ld/sm_st are logged per thread and code site, and counted in
// wavefronts (bank conflicts) per warp-wide request when each wave of blocks ends.
#pragma once

// The hand-written stack switch needs x86-64 and an ELF assembler (Linux, BSD); elsewhere ucontext.
#if defined(__x86_64__) && defined(__ELF__)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#include <math.h>  // expf, logf, erff, sqrtf, fmaxf: the CUDA math functions the kernels call

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
// Without CUDA's 16-byte alignment: GCC may merge a kernel's scalar and vector paths into one aligned SSE load,
// so the emulation checks the alignment of 16-byte global accesses itself (emu::check_align16).
struct uint4 {
    unsigned x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
struct double2 {
    double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

// Half-precision types: the bits, converted with round-to-nearest-even as the CUDA intrinsics do.
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half_rn(float x) {
    _Float16 f = (_Float16)x;  // GCC converts with round-to-nearest-even
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.bits = (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    } else {
        b.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return b;
}

namespace emu {

#if EMU_ASM_SWITCH
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack
// pointer in *save, switches to `next` and restores the same from there (System V ABI: nothing else survives a
// call). glibc's swapcontext also saves the signal mask, a system call per switch, which we do not need.
extern "C" void emu_switch(void** save, void* next);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
struct Context {
    void* sp = nullptr;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

struct Block;

struct Fiber {
    Context ctx;
    dim3 tid;
    Block* block = nullptr;
    bool done = false;
    const unsigned* wait_gen = nullptr;  // blocked at a barrier until *wait_gen != gen_seen
    unsigned gen_seen = 0;
    // shared-memory accesses, for the bank-conflict count: (code site, n-th access from that site) -> address
    struct Access {
        const void* site;
        unsigned nth;
        uintptr_t addr;
        unsigned bytes;
    };
    std::vector<Access> smem_log;
    std::vector<std::pair<const void*, unsigned>> site_count;  // few sites per kernel: a linear search
    std::unique_ptr<char[]> stack;
    std::function<void()>* body = nullptr;
};

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
};

struct Warp {
    Barrier bar;
    uint64_t slot[32];
};

struct Block {
    dim3 bid;
    std::vector<uint64_t> smem;  // 8-byte aligned; aligned to 16 below
    unsigned char* smem_base = nullptr;
    Barrier bar;
    std::vector<Warp> warps;
};

struct Sched {
    Context main;
    Fiber* cur = nullptr;
    dim3 block_dim, grid_dim;
    long long progress = 0;  // barrier arrivals and finished fibers
    bool jitter = false;     // pause threads at random for up to 2,047 rounds (varies the interleaving)
    // shared-memory wavefronts of the launches so far, and the conflict-free minimum for the same requests
    long long smem_wavefronts = 0, smem_ideal = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
};

inline Sched& S() {
    static Sched s;
    return s;
}

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "emu: %s\n", what);
    std::abort();
}

inline void switch_to(Context& save, Context& next) {
#if EMU_ASM_SWITCH
    emu_switch(&save.sp, next.sp);
#else
    swapcontext(&save.uc, &next.uc);
#endif
}

inline void yield() {
    Sched& s = S();
    switch_to(s.cur->ctx, s.main);
}

inline void wait_all(Barrier& b, int count) {
    ++S().progress;
    const unsigned gen = b.gen;
    if (++b.arrived == count) {
        b.arrived = 0;
        ++b.gen;
    } else {
        Fiber* f = S().cur;
        f->wait_gen = &b.gen;  // the scheduler resumes this fiber only once the barrier has opened
        f->gen_seen = gen;
        yield();
        f->wait_gen = nullptr;
    }
}

inline unsigned thread_linear() {
    const Sched& s = S();
    return s.cur->tid.x + s.block_dim.x * (s.cur->tid.y + s.block_dim.y * s.cur->tid.z);
}

inline unsigned block_threads() {
    const Sched& s = S();
    return s.block_dim.x * s.block_dim.y * s.block_dim.z;
}

inline void syncthreads() { wait_all(S().cur->block->bar, (int)block_threads()); }

inline Warp& warp() { return S().cur->block->warps[thread_linear() / 32]; }

inline int warp_size() {
    const unsigned t = thread_linear(), n = block_threads();
    const unsigned first = t / 32 * 32;
    return (int)(n - first < 32 ? n - first : 32);
}

template <typename T> T shfl_xor(T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    Warp& w = warp();
    const int lane = (int)(thread_linear() % 32);
    std::memcpy(&w.slot[lane], &v, sizeof(T));
    wait_all(w.bar, warp_size());
    const int src = lane ^ lane_mask;
    if (src >= warp_size()) fail("shuffle source lane outside the warp");
    T r;
    std::memcpy(&r, &w.slot[src], sizeof(T));
    wait_all(w.bar, warp_size());
    return r;
}

inline unsigned char* smem() { return S().cur->block->smem_base; }

// Records one shared-memory access of the current thread from the code site `site`.
inline void log_smem(const void* site, const void* p, unsigned bytes) {
    Fiber* f = S().cur;
    unsigned nth = 0;
    bool found = false;
    for (auto& [s, n] : f->site_count)
        if (s == site) {
            nth = n++;
            found = true;
            break;
        }
    if (!found) f->site_count.push_back({site, 1});
    f->smem_log.push_back({site, nth, reinterpret_cast<uintptr_t>(p), bytes});
}

// Wavefronts of one warp-wide request: lanes are served in phases of 128 bytes (32 lanes of 4 bytes, 16 of 8,
// 8 of 16), and a phase takes as many wavefronts as the largest number of distinct 4-byte words in one bank.
inline void count_request(const std::vector<std::pair<unsigned, const Fiber::Access*>>& lanes) {
    Sched& s = S();
    const unsigned bytes = lanes.front().second->bytes;
    const unsigned per_phase = bytes >= 16 ? 8 : (bytes == 8 ? 16 : 32);
    for (unsigned ph = 0; ph < 32 / per_phase; ++ph) {
        uintptr_t words[32][32];  // per bank, the distinct 4-byte words requested
        unsigned count[32] = {0};
        bool any = false;
        for (auto& [lane, a] : lanes) {
            if (lane / per_phase != ph) continue;
            any = true;
            for (uintptr_t w = a->addr / 4; w < (a->addr + a->bytes + 3) / 4; ++w) {
                const unsigned b = (unsigned)(w % 32);
                bool seen = false;
                for (unsigned i = 0; i < count[b]; ++i) seen |= words[b][i] == w;
                if (!seen && count[b] < 32) words[b][count[b]++] = w;
            }
        }
        if (!any) continue;
        unsigned worst = 1;
        for (unsigned b = 0; b < 32; ++b) worst = count[b] > worst ? count[b] : worst;
        s.smem_wavefronts += worst;
        s.smem_ideal += 1;
    }
}

// Groups the logged accesses of each warp into warp-wide requests and counts their wavefronts: by position
// when every lane logged the same sequence of code sites (converged), else by (site, n-th access from it).
inline void count_bank_conflicts(const std::vector<std::unique_ptr<Fiber>>& fibers, unsigned nthreads) {
    std::vector<std::pair<unsigned, const Fiber::Access*>> lanes;
    for (size_t block = 0; block < fibers.size(); block += nthreads) {
        for (size_t first = block; first < block + nthreads; first += 32) {
            const size_t last = first + 32 < block + nthreads ? first + 32 : block + nthreads;
            const auto& log0 = fibers[first]->smem_log;
            bool converged = true;
            for (size_t i = first + 1; i < last && converged; ++i) {
                const auto& l = fibers[i]->smem_log;
                converged = l.size() == log0.size();
                for (size_t k = 0; k < l.size() && converged; ++k) converged = l[k].site == log0[k].site;
            }
            if (converged) {
                for (size_t k = 0; k < log0.size(); ++k) {
                    lanes.clear();
                    for (size_t i = first; i < last; ++i) lanes.push_back({(unsigned)(i - first), &fibers[i]->smem_log[k]});
                    count_request(lanes);
                }
                continue;
            }
            std::map<std::pair<const void*, unsigned>, std::vector<std::pair<unsigned, const Fiber::Access*>>> req;
            for (size_t i = first; i < last; ++i)
                for (const auto& a : fibers[i]->smem_log) req[{a.site, a.nth}].push_back({(unsigned)(i - first), &a});
            for (auto& [key, group] : req) count_request(group);
        }
    }
}

// First code a fiber runs; S().cur is the fiber.
inline void fiber_entry() {
    Fiber* f = S().cur;
    (*f->body)();
    f->done = true;
    switch_to(f->ctx, S().main);
    fail("a finished fiber was resumed");
}

#if !EMU_ASM_SWITCH
inline void fiber_entry_uc() { fiber_entry(); }
#endif

inline void start_fiber(Fiber& f, size_t stack_bytes) {
    f.stack.reset(new char[stack_bytes]);
#if EMU_ASM_SWITCH
    // the frame emu_switch pops: MXCSR and x87 control word, six registers, then `ret` into fiber_entry with
    // the stack as after a call (rsp = 8 mod 16)
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack.get()) + stack_bytes) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;  // return address of fiber_entry (it never returns)
    *--sp = reinterpret_cast<uint64_t>(&fiber_entry);
    for (int i = 0; i < 6; ++i) *--sp = 0;
    *--sp = 0x1f80ull | (0x037full << 32);  // default MXCSR, default x87 control word
    f.ctx.sp = sp;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc.uc_stack.ss_size = stack_bytes;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, fiber_entry_uc, 0);
#endif
}

// Runs `kernel` (a call of the kernel function with its arguments) over `grid` blocks of `block` threads with
// `smem_bytes` of dynamic shared memory, `wave` blocks at a time (all blocks of a wave run concurrently; a
// persistent kernel needs its whole grid in one wave). Aborts on a deadlock (no fiber can make progress).
// With S().jitter, a thread pauses with probability 1/4096 per turn for 0 to 2,047 rounds (a fixed
// pseudo-random sequence), so that threads and blocks run at very uneven speeds and a missing wait or barrier
// shows up as wrong values.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, unsigned wave, std::function<void()> kernel) {
    Sched& s = S();
    s.grid_dim = grid;
    s.block_dim = block;
    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024) fail("block size out of range");
    if (smem_bytes > 227 * 1024) fail("more dynamic shared memory than an H100 block may have");
    const unsigned nblocks = grid.x * grid.y * grid.z;
    constexpr size_t STACK = 64 * 1024;
    constexpr size_t GUARD = 256;  // 8-byte words after the dynamic shared memory
    constexpr uint64_t FILL = 0x7ff8dead7ff8deadull;
    for (unsigned first = 0; first < nblocks; first += wave) {
        const unsigned nb = nblocks - first < wave ? nblocks - first : wave;
        std::vector<std::unique_ptr<Block>> blocks;
        std::vector<std::unique_ptr<Fiber>> fibers;
        for (unsigned b = 0; b < nb; ++b) {
            auto blk = std::make_unique<Block>();
            const unsigned id = first + b;
            blk->bid = {id % grid.x, id / grid.x % grid.y, id / (grid.x * grid.y)};
            // garbage (a NaN pattern, never zeros), then a guard zone checked when the wave ends
            blk->smem.assign(smem_bytes / 8 + 4 + GUARD, FILL);
            blk->smem_base = reinterpret_cast<unsigned char*>(
                (reinterpret_cast<uintptr_t>(blk->smem.data()) + 15) & ~uintptr_t(15));
            blk->warps.resize((nthreads + 31) / 32);
            for (unsigned t = 0; t < nthreads; ++t) {
                auto f = std::make_unique<Fiber>();
                f->tid = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                f->block = blk.get();
                f->body = &kernel;
                start_fiber(*f, STACK);
                fibers.push_back(std::move(f));
            }
            blocks.push_back(std::move(blk));
        }
        size_t live = fibers.size();
        int idle_rounds = 0;
        std::vector<unsigned> pause(fibers.size(), 0);
        while (live > 0) {
            const long long before = s.progress;
            size_t finished = 0;
            for (size_t i = 0; i < fibers.size(); ++i) {
                Fiber* f = fibers[i].get();
                if (f->done || (f->wait_gen != nullptr && *f->wait_gen == f->gen_seen)) continue;
                if (s.jitter) {
                    s.rng ^= s.rng << 13, s.rng ^= s.rng >> 7, s.rng ^= s.rng << 17;
                    if (pause[i] > 0) {
                        --pause[i];
                        continue;
                    }
                    if ((s.rng >> 40) % 4096 == 0) {
                        pause[i] = (unsigned)(s.rng >> 20) % 2048;
                        continue;
                    }
                }
                s.cur = f;
                switch_to(s.main, f->ctx);
                if (f->done) ++finished;
            }
            s.cur = nullptr;
            live -= finished;
            // a round in which no fiber arrived at a barrier or finished: every fiber waits (or spins) on the
            // others, which is a deadlock
            if (finished == 0 && s.progress == before) {
                if (++idle_rounds > (s.jitter ? 4096 : 2)) fail("deadlock: rounds without progress");
            } else {
                idle_rounds = 0;
            }
        }
        count_bank_conflicts(fibers, nthreads);
        for (auto& blk : blocks) {  // the guard zone still holds the fill pattern
            const unsigned char* data = reinterpret_cast<const unsigned char*>(blk->smem.data());
            const size_t from = (size_t)(blk->smem_base - data) + smem_bytes;
            for (size_t i = from; i < blk->smem.size() * 8; ++i)
                if (data[i] != (unsigned char)(FILL >> (8 * (i % 8)))) fail("a block wrote past its dynamic shared memory");
        }
    }
}

}  // namespace emu

#define threadIdx (emu::S().cur->tid)
#define blockIdx (emu::S().cur->block->bid)
#define blockDim (emu::S().block_dim)
#define gridDim (emu::S().grid_dim)

inline void __syncthreads() { emu::syncthreads(); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask) { return emu::shfl_xor(v, lane_mask); }
namespace emu {
inline void check_align16(const void* p) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("misaligned 16-byte global access");
}
}  // namespace emu
template <typename T> inline T __ldcs(const T* p) { return *p; }
inline uint4 __ldcs(const uint4* p) {
    emu::check_align16(p);
    uint4 v;
    std::memcpy(&v, p, 16);
    return v;
}
inline void store16(uint4* p, uint4 v) {
    emu::check_align16(p);
    std::memcpy(p, &v, 16);
}
template <typename T> __attribute__((noinline)) T sm_ld(const T* p) {
    emu::log_smem(__builtin_return_address(0), p, sizeof(T));
    return *p;
}
template <typename T> __attribute__((noinline)) void sm_st(T* p, T v) {
    emu::log_smem(__builtin_return_address(0), p, sizeof(T));
    *p = v;
}
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
inline void __threadfence() {}
inline void __nanosleep(unsigned) { emu::yield(); }
[[noreturn]] inline void __trap() { emu::fail("__trap() in a kernel"); }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
