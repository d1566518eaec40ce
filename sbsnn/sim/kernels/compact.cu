// compact.cu -- event compaction of integer spike counts into CSR (sbsnn).
//
// counts [N, D] (row-major, one row per token) -> per token the input channels that fire
// and their signed counts, in ascending channel order:
//
//   row_nnz_kernel:  nnz[n] = #{i : counts[n, i] != 0}
//   (host: row_ptr[0] = 0, row_ptr[n + 1] = cumsum(nnz)[n], E = row_ptr[N])
//   compact_kernel:  for e in [row_ptr[n], row_ptr[n + 1]):
//                        channels[e] = i, values[e] = counts[n, i]   (i ascending)
//                    group_ptr[n, g] = row_ptr[n] + #{i < g * group_size : counts[n, i] != 0}
//                    for g in [0, G), and group_ptr[n, G] = row_ptr[n + 1]
//
// group_ptr [N, G + 1] (absolute offsets into channels/values) marks where each weight
// group's events start: the event-driven accumulation gives one block to one (token,
// group) and walks exactly that range. It comes for free here: the exclusive prefix count
// at a group's first channel is the group's start, whether that channel fires or not.
//
// Launch (both kernels): grid = (N,), block = (CP_BLOCK,) = 256 threads, one block per row.
// row_nnz_kernel: each thread counts nonzeros on a stride of the row; warp shuffles and
// shared memory sum them. compact_kernel: the row is walked in chunks of 256 channels,
// one per thread; a warp ballot gives each thread the number of nonzeros before it in its
// warp, per-warp totals in shared memory give the warp's offset, and a running total
// carries chunk to chunk, so the output keeps channel order without atomics.
//
// Template: TC in {signed char, short, int} (the counts' dtype; values are written as int).
// Requires D < 2**31 and N < 2**31 (checked by the wrapper).

#define CP_BLOCK 256
#define CP_WARPS (CP_BLOCK / 32)

template <typename TC>
__global__ void __launch_bounds__(CP_BLOCK) row_nnz_kernel(
    const TC* __restrict__ counts,    // [N, D]
    int D,
    long long* __restrict__ nnz)      // [N]
{
    __shared__ int s_cnt[CP_WARPS];
    const TC* cr = counts + (long long)blockIdx.x * D;
    int c = 0;
    for (int i = threadIdx.x; i < D; i += CP_BLOCK) c += (cr[i] != 0) ? 1 : 0;
    for (int off = 16; off > 0; off >>= 1) c += __shfl_down_sync(0xffffffffu, c, off);
    if ((threadIdx.x & 31) == 0) s_cnt[threadIdx.x >> 5] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        long long total = 0;
        for (int w = 0; w < CP_WARPS; ++w) total += s_cnt[w];
        nnz[blockIdx.x] = total;
    }
}

template <typename TC>
__global__ void __launch_bounds__(CP_BLOCK) compact_kernel(
    const TC* __restrict__ counts,        // [N, D]
    int D,
    const long long* __restrict__ row_ptr,  // [N + 1]
    int* __restrict__ channels,           // [E]
    int* __restrict__ values,             // [E]
    int group_size,
    int G,                                // ceil(D / group_size)
    long long* __restrict__ group_ptr)    // [N, G + 1]
{
    __shared__ int s_warp[CP_WARPS];
    const long long row = blockIdx.x;
    const TC* cr = counts + row * (long long)D;
    long long* gp = group_ptr + row * (long long)(G + 1);
    const long long base = row_ptr[row];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const unsigned below = (1u << lane) - 1u;   // lanes before this one
    long long running = 0;                      // nonzeros in earlier chunks

    for (int c0 = 0; c0 < D; c0 += CP_BLOCK) {  // uniform trip count: every thread syncs
        const int c = c0 + (int)threadIdx.x;
        const int v = (c < D) ? (int)cr[c] : 0;
        const unsigned ballot = __ballot_sync(0xffffffffu, v != 0);
        if (lane == 0) s_warp[warp] = __popc(ballot);
        __syncthreads();
        int before = 0, chunk = 0;
        for (int w = 0; w < CP_WARPS; ++w) {
            const int t = s_warp[w];
            before += (w < warp) ? t : 0;
            chunk += t;
        }
        const long long pos = base + running + before + __popc(ballot & below);
        if (v != 0) {
            channels[pos] = c;
            values[pos] = v;
        }
        if (c < D && c % group_size == 0) gp[c / group_size] = pos;
        running += chunk;
        __syncthreads();                        // s_warp is rewritten by the next chunk
    }
    if (threadIdx.x == 0) gp[G] = base + running;
}
