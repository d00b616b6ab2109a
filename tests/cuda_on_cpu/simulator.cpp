// Runs kernel launches on the host (see cuda_runtime.h): every block, every warp of it, the 32 lanes of a
// warp as fibers. Fibers are made once with makecontext and switched with _setjmp/_longjmp, which, unlike
// swapcontext, costs no system call: a 65,537-image launch runs 17 million simulated threads.
//
// SIMULATOR_SEED=<n> in the environment visits blocks, warps and lanes in an order shuffled by n, so a
// kernel that depends on the order in which threads run shows it.
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMULATOR_ASAN 1
#endif

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 512 * 1024;

cudaError_t last_error = cudaSuccess;

enum class Intrinsic { none, ballot, shuffle };

const char* intrinsic_name(Intrinsic intrinsic) {
    return intrinsic == Intrinsic::ballot ? "__ballot_sync" : intrinsic == Intrinsic::shuffle ? "__shfl_sync" : "none";
}

struct Lane {
    jmp_buf context;
    std::vector<char> stack;
    uint3 thread;        // threadIdx of the simulated thread this lane runs
    bool live = false;   // started and not yet returned
    Intrinsic waiting = Intrinsic::none;
    unsigned mask = 0;
    uint64_t operand = 0;  // ballot: the predicate; shuffle: the value offered
    int source = 0;        // shuffle: the lane read from
    uint64_t result = 0;
};

struct Warp {
    Lane lanes[kWarpSize];
    jmp_buf scheduler;
    int current = 0;  // the lane running now
    const std::function<void()>* thread = nullptr;
    std::vector<int> order;  // the order in which lanes are resumed
    std::mt19937 random;
    bool shuffled = false;
} warp;

// ---- fibers ---------------------------------------------------------------------------------------------

#ifdef SIMULATOR_ASAN
// AddressSanitizer must be told about every stack switch (else it reports false positives).
const void* main_stack_bottom = nullptr;
size_t main_stack_size = 0;
void* main_fake_stack = nullptr;
void before_switch_to_lane(Lane& lane) {
    __sanitizer_start_switch_fiber(&main_fake_stack, lane.stack.data(), lane.stack.size());
}
void after_switch_to_main() { __sanitizer_finish_switch_fiber(main_fake_stack, nullptr, nullptr); }
void before_switch_to_main() { __sanitizer_start_switch_fiber(nullptr, main_stack_bottom, main_stack_size); }
void after_switch_to_lane(bool first) {
    __sanitizer_finish_switch_fiber(nullptr, first ? &main_stack_bottom : nullptr, first ? &main_stack_size : nullptr);
}
#else
void before_switch_to_lane(Lane&) {}
void after_switch_to_main() {}
void before_switch_to_main() {}
void after_switch_to_lane(bool) {}
#endif

void switch_to_lane(int index) {
    warp.current = index;
    before_switch_to_lane(warp.lanes[index]);
    if (!_setjmp(warp.scheduler)) _longjmp(warp.lanes[index].context, 1);
    after_switch_to_main();
}

void switch_to_scheduler() {
    Lane& lane = warp.lanes[warp.current];
    before_switch_to_main();
    if (!_setjmp(lane.context)) _longjmp(warp.scheduler, 1);
    after_switch_to_lane(false);
}

// Body of every lane fiber, for the life of the process: run the thread it is given, then report back.
void lane_main() {
    after_switch_to_lane(true);
    switch_to_scheduler();  // parked until the first warp
    for (;;) {
        (*warp.thread)();
        warp.lanes[warp.current].live = false;
        switch_to_scheduler();
    }
}

void make_fiber(int index) {
    Lane& lane = warp.lanes[index];
    lane.stack.resize(kStackBytes);
    ucontext_t boot, here;
    getcontext(&boot);
    boot.uc_stack.ss_sp = lane.stack.data();
    boot.uc_stack.ss_size = lane.stack.size();
    boot.uc_link = nullptr;
    makecontext(&boot, lane_main, 0);
    warp.current = index;
    before_switch_to_lane(lane);
    if (!_setjmp(warp.scheduler)) swapcontext(&here, &boot);  // lane_main parks itself and jumps back
    after_switch_to_main();
}

void make_fibers() {
    static bool made = false;
    if (made) return;
    made = true;
    for (int k = 0; k < kWarpSize; ++k) make_fiber(k);
}

[[noreturn]] void fail(const char* what) {
    fprintf(stderr, "cuda_on_cpu: %s (block (%u, %u, %u), warp of thread (%u, %u, %u))\n", what, blockIdx.x,
            blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    fflush(stderr);
    abort();
}

// ---- warps ------------------------------------------------------------------------------------------------

// All live lanes wait on an intrinsic: check that they agree, then give each its result.
void resolve_intrinsic(unsigned live) {
    const Lane* first = nullptr;
    for (int k = 0; k < kWarpSize; ++k) {
        const Lane& lane = warp.lanes[k];
        if (!lane.live) continue;
        if (!first) first = &lane;
        if (lane.waiting != first->waiting || lane.mask != first->mask) {
            char message[160];
            snprintf(message, sizeof message,
                     "divergent warp intrinsics: lane %d waits on %s mask %08x, another on %s mask %08x", k,
                     intrinsic_name(lane.waiting), lane.mask, intrinsic_name(first->waiting), first->mask);
            fail(message);
        }
    }
    if (first->mask != live) {
        char message[128];
        snprintf(message, sizeof message, "%s mask %08x does not name exactly the live lanes %08x",
                 intrinsic_name(first->waiting), first->mask, live);
        fail(message);
    }
    unsigned votes = 0;
    for (int k = 0; k < kWarpSize; ++k)
        if (warp.lanes[k].live && warp.lanes[k].operand) votes |= 1u << k;
    for (int k = 0; k < kWarpSize; ++k) {
        Lane& lane = warp.lanes[k];
        if (!lane.live) continue;
        if (lane.waiting == Intrinsic::shuffle) {
            const int source = lane.source & (kWarpSize - 1);  // the hardware takes the source lane modulo 32
            if (!(live >> source & 1u)) fail("__shfl_sync reads a lane that is not live");
            lane.result = warp.lanes[source].operand;
        } else {
            lane.result = votes;
        }
        lane.waiting = Intrinsic::none;
    }
}

void run_warp(const uint3* threads, int count) {
    unsigned live = 0;
    for (int k = 0; k < count; ++k) {
        warp.lanes[k].thread = threads[k];
        warp.lanes[k].live = true;
        warp.lanes[k].waiting = Intrinsic::none;
        live |= 1u << k;
    }
    warp.order.resize(count);
    std::iota(warp.order.begin(), warp.order.end(), 0);
    if (warp.shuffled) std::shuffle(warp.order.begin(), warp.order.end(), warp.random);
    for (;;) {
        for (int k : warp.order) {
            if (!warp.lanes[k].live || warp.lanes[k].waiting != Intrinsic::none) continue;
            threadIdx = warp.lanes[k].thread;
            switch_to_lane(k);  // runs until the lane waits on an intrinsic or returns
        }
        live = 0;
        for (int k = 0; k < count; ++k) live |= (unsigned)warp.lanes[k].live << k;
        if (!live) return;
        resolve_intrinsic(live);
    }
}

Lane& arrive(Intrinsic intrinsic, unsigned mask, uint64_t operand, int source) {
    Lane& lane = warp.lanes[warp.current];
    lane.waiting = intrinsic;
    lane.mask = mask;
    lane.operand = operand;
    lane.source = source;
    switch_to_scheduler();
    return lane;
}

bool launch_is_valid(dim3 grid, dim3 block) {
    // Limits of compute capability 8.x/9.x.
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    return grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 &&
           grid.z <= 65535 && block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 &&
           block.y <= 1024 && block.z <= 64 && threads <= 1024;
}

}  // namespace

cudaError_t cudaGetLastError() {
    const cudaError_t error = last_error;
    last_error = cudaSuccess;
    return error;
}

const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    }
    return "unrecognized error code";
}

namespace cuda_on_cpu {

unsigned ballot(unsigned mask, bool predicate) {
    return (unsigned)arrive(Intrinsic::ballot, mask, predicate ? 1 : 0, 0).result;
}

uint64_t shuffle(unsigned mask, uint64_t bits, int source_lane) {
    return arrive(Intrinsic::shuffle, mask, bits, source_lane).result;
}

void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread) {
    if (!launch_is_valid(grid, block)) {
        if (last_error == cudaSuccess) last_error = cudaErrorInvalidConfiguration;
        return;
    }
    make_fibers();
    static const char* seed = getenv("SIMULATOR_SEED");
    if (seed && !warp.shuffled) {
        warp.shuffled = true;
        warp.random.seed((unsigned)strtoul(seed, nullptr, 10));
    }
    gridDim = grid;
    blockDim = block;
    warp.thread = &thread;

    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
    std::vector<uint64_t> block_order(blocks);
    std::iota(block_order.begin(), block_order.end(), 0);
    if (warp.shuffled) std::shuffle(block_order.begin(), block_order.end(), warp.random);

    const int threads = (int)(block.x * block.y * block.z);
    std::vector<uint3> ids(threads);
    for (int t = 0; t < threads; ++t)
        ids[t] = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    const int warps = (threads + kWarpSize - 1) / kWarpSize;
    std::vector<int> warp_order(warps);
    std::iota(warp_order.begin(), warp_order.end(), 0);

    for (const uint64_t b : block_order) {
        const uint64_t layer = (uint64_t)grid.x * grid.y;
        blockIdx = {(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / layer)};
        if (warp.shuffled) std::shuffle(warp_order.begin(), warp_order.end(), warp.random);
        for (const int w : warp_order)
            run_warp(&ids[w * kWarpSize], std::min(kWarpSize, threads - w * kWarpSize));
    }
}

}  // namespace cuda_on_cpu
