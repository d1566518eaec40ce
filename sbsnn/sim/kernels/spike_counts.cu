// spike_counts.cu -- fused adaptive threshold and integer spike counts (sbsnn).
//
// For each token row x[n, 0:D] (row-major [N, D], features contiguous):
//
//   V_th[n]      = clamp(mean_i |x[n, i]| / k, 1e-5, 1e4)           stored in TIn
//   counts[n, i] = rint(x[n, i] / V_th[n])                          round half to even
//   peak[n]      = rint(max_i |x[n, i]| / V_th[n])  (= max_i |counts[n, i]|, as float)
//
// This is sbsnn.neurons.spike_counts(x, k) with the default adaptive threshold. Every
// step after the mean is the same IEEE operation torch performs in x's dtype: the quotient
// is correctly rounded (__fdiv_rn) and, for half/bf16 inputs, rounded to that type before
// rint, as torch.round(x / v) does. So counts equal torch.round(x / V_th) exactly for the
// V_th this kernel returns. V_th itself is a sum over the row; it is accumulated in double
// here and in float by torch (in another order), so it may differ from torch's in the
// last ulp or two (and a count can then differ at an exact .5 tie): tests compare counts
// against torch.round(x / V_th_kernel) exactly and V_th against torch within a few ulps.
//
// peak is max|count| without saturation: |round(x / v)| is monotone in |x|, so it is the
// count of the largest |x|. Counts outside TOut's range are saturated here; the Python
// wrapper reads peak and raises instead of returning them. A row holding NaN or Inf gets
// V_th = NaN, peak = NaN and zero counts (the wrapper raises on it).
//
// Launch: grid = (N,), block = (SC_BLOCK,) = 256 threads, no dynamic shared memory.
// One block per row: pass 1, each thread strides over the row summing |x| (double) and
// taking max|x|; a warp-shuffle reduction, then one value per warp through shared memory,
// gives the row's sum and max to thread 0, which computes V_th and peak. Pass 2 strides
// over the row again (now in L1/L2) and writes the counts.
//
// Template: TIn in {float, sb_half, sb_bf16} (16-bit types as raw bits, no headers needed),
// TOut in {signed char, short}. Name expressions: spike_counts_kernel<float, signed char>...

#define SC_BLOCK 256
#define SC_WARPS (SC_BLOCK / 32)

struct sb_half { unsigned short bits; };   // IEEE binary16, as torch.float16 stores it
struct sb_bf16 { unsigned short bits; };   // bfloat16, as torch.bfloat16 stores it

#ifndef SBSNN_HOST_EMULATION
// Conversions by PTX (sm_80+), so neither cuda_fp16.h nor cuda_bf16.h is needed under NVRTC.
// (The host emulation used by the CPU tests supplies software versions of these three.)
__device__ __forceinline__ float f16_bits_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short float_to_f16_bits(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ unsigned short float_to_bf16_bits(float f) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

// to_f: exact widening to float. round_to<T>(f): f rounded (to nearest even) to T, as float.
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(sb_half v) { return f16_bits_to_float(v.bits); }
__device__ __forceinline__ float to_f(sb_bf16 v) { return __uint_as_float(((unsigned)v.bits) << 16); }

template <typename T> struct Narrow;
template <> struct Narrow<float> {
    static __device__ __forceinline__ float store(float f) { return f; }
};
template <> struct Narrow<sb_half> {
    static __device__ __forceinline__ sb_half store(float f) { sb_half h; h.bits = float_to_f16_bits(f); return h; }
};
template <> struct Narrow<sb_bf16> {
    static __device__ __forceinline__ sb_bf16 store(float f) { sb_bf16 h; h.bits = float_to_bf16_bits(f); return h; }
};
template <typename T>
__device__ __forceinline__ float round_to(float f) { return to_f(Narrow<T>::store(f)); }

template <typename T> struct CountMax;
template <> struct CountMax<signed char> { static constexpr float value = 127.0f; };
template <> struct CountMax<short> { static constexpr float value = 32767.0f; };

template <typename TIn, typename TOut>
__global__ void __launch_bounds__(SC_BLOCK) spike_counts_kernel(
    const TIn* __restrict__ x,        // [N, D]
    TOut* __restrict__ counts,        // [N, D]
    TIn* __restrict__ v_th,           // [N]
    float* __restrict__ peak,         // [N]
    int D,
    float k)                          // float32(k), as torch uses it for a float32 tensor
{
    __shared__ double s_sum[SC_WARPS];
    __shared__ float s_max[SC_WARPS];
    __shared__ float s_v;

    const long long row = blockIdx.x;
    const TIn* xr = x + row * (long long)D;
    TOut* cr = counts + row * (long long)D;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;

    // Pass 1: sum and max of |x| over the row.
    double sum = 0.0;
    float amax = 0.0f;
    for (int i = threadIdx.x; i < D; i += SC_BLOCK) {
        const float a = fabsf(to_f(xr[i]));
        sum += (double)a;
        amax = fmaxf(amax, a);
    }
    for (int off = 16; off > 0; off >>= 1) {
        sum += __shfl_down_sync(0xffffffffu, sum, off);
        amax = fmaxf(amax, __shfl_down_sync(0xffffffffu, amax, off));
    }
    if (lane == 0) {
        s_sum[warp] = sum;
        s_max[warp] = amax;
    }
    __syncthreads();

    if (threadIdx.x == 0) {
        double total = 0.0;
        float m = 0.0f;
        for (int w = 0; w < SC_WARPS; ++w) {
            total += s_sum[w];
            m = fmaxf(m, s_max[w]);
        }
        float v, pk;
        // A sum of |finite floats| in double cannot overflow, so a non-finite total means
        // the row holds NaN or Inf (NaN also fails this comparison).
        if (total <= 1.7976931348623157e308) {
            const float mean = round_to<TIn>((float)(total / (double)D));
            const float lo = round_to<TIn>(1e-5f);
            const float hi = round_to<TIn>(1e4f);
            v = round_to<TIn>(__fdiv_rn(mean, k));
            v = fminf(fmaxf(v, lo), hi);
            pk = rintf(round_to<TIn>(__fdiv_rn(m, v)));
        } else {
            v = __int_as_float(0x7fffffff);   // NaN
            pk = v;
        }
        s_v = v;
        v_th[row] = Narrow<TIn>::store(v);
        peak[row] = pk;
    }
    __syncthreads();

    // Pass 2: counts = rint(x / V_th), saturated to TOut (the wrapper rejects saturation).
    const float v = s_v;
    const bool ok = (v == v);
    const float cmax = CountMax<TOut>::value;
    for (int i = threadIdx.x; i < D; i += SC_BLOCK) {
        float r = rintf(round_to<TIn>(__fdiv_rn(to_f(xr[i]), v)));
        r = ok ? fminf(fmaxf(r, -cmax), cmax) : 0.0f;
        cr[i] = (TOut)r;
    }
}
