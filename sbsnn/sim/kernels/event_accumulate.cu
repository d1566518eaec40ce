// event_accumulate.cu -- event-driven integer accumulation, one accumulator per weight group.
//
//   acc[g, n, o] = sum over the events e of token n in group g of  values[e] * W[channels[e], o]
//
// W = codes_t [D, O] int8 (the layer's weight codes transposed, so that one input channel's
// weights are contiguous); the events are the CSR from compact.cu, channels ascending per
// token, and group_ptr [N, G + 1] gives each (token, group)'s range of events. With the
// counts c this is acc[g, n, o] = sum_{i in group g} codes[o, i] * c[n, i], the integers
// sbsnn.converters.quant.group_accumulate returns (int64 there, int32 here: the wrapper
// checks max|c| * 127 * group_size < 2**31, so no partial sum can overflow).
//
// A multi-spike event-driven core: each active channel is one event carrying its signed
// count, which adds count * W[ch, :] to the token's accumulators -- the same integers as
// adding +-step_weight * W[ch, :] once per spike per time step (sbsnn.sim.engine's CPU
// path walks the steps), since sum_t polarity * step_weight = count for every coding.
// Silent channels cost nothing: only active channels' weight rows are read.
//
// Launch: grid = (G * N, ceil(O / (32 * VEC))), block = (EA_BLOCK,) = 128 threads = 4 warps.
// blockIdx.x = g * N + n (consecutive blocks share group g's weight rows, which stay in
// L2 across tokens); blockIdx.y picks a tile of 32 * VEC outputs; lane l of every warp owns
// the VEC consecutive outputs o0 = (tile * 32 + l) * VEC. The (token, group)'s events are
// dealt round-robin to the 4 warps (event i to warp i % 4), which shortens each thread's
// chain of dependent loads. A warp reads 32 of its events at once (one per lane) and
// broadcasts them with shuffles; each thread then issues EA_UNROLL independent
// VEC-byte loads of weight codes before the multiply-adds into VEC int32 accumulators in
// registers. Finally the 4 warps' partial sums meet in shared memory (no atomics: the
// block owns its outputs), each warp adds up a quarter of the VEC outputs and stores it.
//
// Template: VEC in {16, 8, 4, 1} bytes per load; the wrapper picks the largest with
// O % VEC == 0 and codes_t VEC-byte aligned (acc 16-byte aligned). Name expressions:
// event_accumulate_kernel<16>, ...

#define EA_BLOCK 128
#define EA_WARPS (EA_BLOCK / 32)
#define EA_UNROLL 8

struct alignas(16) sb_int4 { int x, y, z, w; };
struct alignas(8) sb_int2 { int x, y; };

// VEC int8 weight codes as they come from one load.
template <int VEC> struct alignas(VEC) Codes { int w[VEC / 4]; };
template <> struct Codes<1> { signed char b; };

template <int VEC>
__device__ __forceinline__ Codes<VEC> load_codes(const signed char* p) {
    return *reinterpret_cast<const Codes<VEC>*>(p);
}

template <int VEC>
__device__ __forceinline__ Codes<VEC> zero_codes() {
    Codes<VEC> c;
    if constexpr (VEC == 1) {
        c.b = 0;
    } else {
#pragma unroll
        for (int j = 0; j < VEC / 4; ++j) c.w[j] = 0;
    }
    return c;
}

// a[j] += v * code j (codes are little-endian bytes within each 32-bit word).
template <int VEC>
__device__ __forceinline__ void mac(int (&a)[VEC], const Codes<VEC>& c, int v) {
    if constexpr (VEC == 1) {
        a[0] += v * (int)c.b;
    } else {
#pragma unroll
        for (int j = 0; j < VEC / 4; ++j) {
            const unsigned u = (unsigned)c.w[j];
            a[4 * j + 0] += v * (int)(signed char)(u & 0xffu);
            a[4 * j + 1] += v * (int)(signed char)((u >> 8) & 0xffu);
            a[4 * j + 2] += v * (int)(signed char)((u >> 16) & 0xffu);
            a[4 * j + 3] += v * (int)(signed char)(u >> 24);
        }
    }
}

// Store R consecutive accumulators (R = 4, 2 or 1; p is R * 4-byte aligned).
template <int R>
__device__ __forceinline__ void store_ints(int* p, const int (&r)[R]) {
    if constexpr (R == 4) {
        sb_int4 q;
        q.x = r[0]; q.y = r[1]; q.z = r[2]; q.w = r[3];
        *reinterpret_cast<sb_int4*>(p) = q;
    } else if constexpr (R == 2) {
        sb_int2 q;
        q.x = r[0]; q.y = r[1];
        *reinterpret_cast<sb_int2*>(p) = q;
    } else {
        p[0] = r[0];
    }
}

// Minimum 7 blocks per SM caps registers at 72: enough for VEC = 16 with all EA_UNROLL loads
// in flight and no spills (ptxas -v, sm_80 and sm_90), while ~900 blocks stay resident.
template <int VEC>
__global__ void __launch_bounds__(EA_BLOCK, 7) event_accumulate_kernel(
    const long long* __restrict__ group_ptr,   // [N, G + 1]
    const int* __restrict__ channels,          // [E]
    const int* __restrict__ values,            // [E]
    const signed char* __restrict__ codes_t,   // [D, O]
    int* __restrict__ acc,                     // [G, N, O]
    int N,
    int G,
    int O)
{
    // Partial sums of the 4 warps, [warp][j][lane]: conflict-free for stores and reads.
    __shared__ int s_part[EA_WARPS][VEC][32];

    const int g = blockIdx.x / N;
    const int n = blockIdx.x - g * N;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int o0 = (blockIdx.y * 32 + lane) * VEC;
    const bool active = o0 < O;                 // O % VEC == 0: a vector is all in or all out
    const signed char* col = codes_t + (active ? o0 : 0);
    const long long begin = group_ptr[(long long)n * (G + 1) + g];
    const long long end = group_ptr[(long long)n * (G + 1) + g + 1];

    int a[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] = 0;

    // This warp's events: begin + warp + EA_WARPS * i. Windows of 32 of them.
    for (long long base = begin + warp; base < end; base += EA_WARPS * 32) {   // warp-uniform
        const long long mine = base + EA_WARPS * lane;
        int my_ch = 0, my_val = 0;
        if (mine < end) {
            my_ch = channels[mine];
            my_val = values[mine];
        }
        const long long left = (end - base + EA_WARPS - 1) / EA_WARPS;
        const int here = left < 32 ? (int)left : 32;          // events of this warp in the window
        for (int u0 = 0; u0 < here; u0 += EA_UNROLL) {
            Codes<VEC> w[EA_UNROLL];
            int v[EA_UNROLL];
#pragma unroll
            for (int u = 0; u < EA_UNROLL; ++u) {               // all lanes shuffle
                const int ch = __shfl_sync(0xffffffffu, my_ch, (u0 + u) & 31);
                const int val = __shfl_sync(0xffffffffu, my_val, (u0 + u) & 31);
                const bool ok = active && (u0 + u < here);
                v[u] = ok ? val : 0;
                w[u] = ok ? load_codes<VEC>(col + (long long)ch * O) : zero_codes<VEC>();
            }
#pragma unroll
            for (int u = 0; u < EA_UNROLL; ++u) mac<VEC>(a, w[u], v[u]);
        }
    }

    // Sum the warps' partials: warp w adds up outputs [w * R, (w + 1) * R) of each lane's
    // vector (R = VEC / 4; for VEC == 1 warp 0 does the single output).
#pragma unroll
    for (int j = 0; j < VEC; ++j) s_part[warp][j][lane] = a[j];
    __syncthreads();
    constexpr int R = VEC >= 4 ? VEC / 4 : VEC;
    if (active && warp < VEC / R) {
        int r[R];
#pragma unroll
        for (int q = 0; q < R; ++q) {
            const int j = warp * R + q;
            r[q] = s_part[0][j][lane];
#pragma unroll
            for (int ww = 1; ww < EA_WARPS; ++ww) r[q] += s_part[ww][j][lane];
        }
        store_ints<R>(acc + ((long long)g * N + n) * O + o0 + warp * R, r);
    }
}
