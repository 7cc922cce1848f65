// gemm_bench: cuBLASLt GEMM and grouped-GEMM throughput over MoE expert-FFN shapes.
//
// One GEMM is the expert projection Y[m, n] = X[m, k] * W[n, k]^T, row-major (torch's F.linear:
// m tokens routed to the expert, k input features, n output features). In cuBLASLt's
// column-major terms this is the "TN" product D(n x m) = op(A)(n x k) * B(k x m) with A = W
// (stored k x n, lda = k, op = T), B = X (k x m, ldb = k), D = Y (n x m, ldd = n): the large
// weight dimensions are cuBLAS's M and K and the token count is its N, which keeps every
// leading dimension a multiple of 16 bytes for any m (FP8 needs that, and needs TN).
//
// Default (n, k) shapes: each model's routed expert, gate+up fused (n = 2 x moe_intermediate,
// k = hidden) and down (n = hidden, k = moe_intermediate), as the simulator's MoE layer costs
// them (moesim/simulate.py) with the sizes of workloads/models/*.yaml:
//   DeepSeek-V3 / Kimi K2  hidden 7168, moe_intermediate 2048  -> (4096, 7168), (7168, 2048)
//   Mixtral-8x7B           hidden 4096, moe_intermediate 14336 -> (28672, 4096), (4096, 14336)
//   Qwen3-235B-A22B        hidden 4096, moe_intermediate 1536  -> (3072, 4096), (4096, 1536)
//   gpt-oss-120b           hidden 2880, moe_intermediate 2880  -> (5760, 2880), (2880, 2880)
// m sweeps 1 .. 16384 tokens per expert (decode to large prefill / training micro-batches).
//
// Grouped mode (--mode grouped): G experts with the same (n, k), expert g multiplying m_g tokens
// (rows of X stored back to back, as after an MoE permutation) with its own W_g. Two
// implementations, each a row:
//   lt_loop         G cublasLtMatmul calls in one stream (BF16 and FP8): cuBLASLt in this CUDA
//                   release has no grouped matmul with a different m per group (its
//                   pointer-array batch mode needs one shape for the whole batch);
//   cublas_grouped  one cublasGemmGroupedBatchedEx call (cuBLAS >= 12.5), one group per expert
//                   (group_size 1): BF16 only, that API takes no FP8 inputs.
//
// Correctness first: every case is checked before it is timed (see check_case), and a case that
// fails is not timed; any failure makes the exit status 1. Exit codes: see common.h / README.md.
#include "common.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <map>
#include <random>
#include <set>

using namespace mb;

namespace {

const char* kProg = "gemm_bench";

#define MB_CUBLAS(call)                                                                          \
  do {                                                                                           \
    cublasStatus_t mb_st_ = (call);                                                              \
    if (mb_st_ != CUBLAS_STATUS_SUCCESS)                                                         \
      ::mb::die(::mb::kExitRuntime, "error: %s failed at %s:%d: %s", #call, __FILE__, __LINE__,   \
                cublasGetStatusName(mb_st_));                                                    \
  } while (0)

enum class DType { BF16, FP8 };
const char* dtype_name(DType t) { return t == DType::BF16 ? "bf16" : "fp8_e4m3"; }
size_t dtype_bytes(DType t) { return t == DType::BF16 ? 2 : 1; }
cudaDataType_t dtype_cuda(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_8F_E4M3; }

struct Shape {
  long long n, k;
};

// Tolerance of one checked entry: |got - ref| <= rtol |ref| + atol_frac * sum_l |x_l w_l|.
// Inputs are multiples of 1/8 in [-1, 1] (exact in BF16 and E4M3), so each product is a multiple
// of 1/64 and, for k <= 2^18, every partial sum is exact in FP32: the CPU reference is exact and
// a correct GEMM differs from it only by the rounding of D to BF16 (unit roundoff 2^-8), whence
// rtol = 2^-7. atol_frac allows a little accumulation error: 2^-12 for BF16 (none is expected);
// 2^-9 for FP8, whose Hopper tensor-core accumulation keeps fewer than FP32's bits between
// promotions. A wrong layout or stale output misses by about |ref| itself and is caught.
struct Tolerance {
  double rtol, atol_frac;
};
Tolerance tolerance_of(DType t) {
  return t == DType::BF16 ? Tolerance{1.0 / 128, 1.0 / 4096} : Tolerance{1.0 / 128, 1.0 / 512};
}

struct Options {
  std::string mode = "gemm";
  std::vector<long long> m = {1, 16, 64, 256, 1024, 4096, 16384};
  std::vector<Shape> shapes = {{4096, 7168}, {7168, 2048}, {28672, 4096}, {4096, 14336},
                               {3072, 4096}, {4096, 1536}, {5760, 2880}, {2880, 2880}};
  std::vector<DType> dtypes = {DType::BF16, DType::FP8};
  long long groups = 8;
  std::vector<long long> group_m;  // explicit per-group m (grouped mode)
  std::vector<std::string> impls = {"lt_loop", "cublas_grouped"};
  int warmup = 5, iters = 20, device = 0;
  unsigned seed = 1234;
  int sample_rows = 16, sample_cols = 256;
  bool flush_l2 = true;
  long long workspace = 32LL << 20;
  std::string json;
};

void usage(FILE* out) {
  std::fprintf(out,
      "usage: gemm_bench [options]\n"
      "cuBLASLt GEMM sweep over MoE expert shapes: Y[m,n] = X[m,k] W[n,k]^T (BF16, and FP8 E4M3 on\n"
      "compute capability >= 8.9), FP32 accumulation, BF16 output. Each case is checked against a\n"
      "CPU reference before it is timed (CUDA events, median of --iters after --warmup).\n"
      "\n"
      "  --mode gemm|grouped   plain GEMMs (default) or grouped GEMM (G experts, same n,k)\n"
      "  --m LIST              tokens per expert, comma-separated (default 1,16,64,256,1024,4096,16384)\n"
      "  --nk LIST             NxK shapes, comma-separated, e.g. 4096x7168,7168x2048 (default: 8 zoo shapes)\n"
      "  --dtype LIST          bf16,fp8 (default both; fp8 is skipped with a reason below cc 8.9)\n"
      "  --groups G            grouped mode: experts per call (default 8: DeepSeek-V3's 256 experts on EP32)\n"
      "  --group-m LIST        grouped mode: explicit tokens of each expert (length G); replaces --m\n"
      "  --impl LIST           grouped mode: lt_loop,cublas_grouped (default both)\n"
      "  --warmup N            untimed iterations per case (default 5)\n"
      "  --iters N             timed iterations per case; the median is reported (default 20)\n"
      "  --no-flush-l2         keep L2 warm between iterations (default: flush, weights come from HBM)\n"
      "  --workspace BYTES     cuBLASLt workspace (default 32M)\n"
      "  --sample-rows R       rows of Y checked per case (default 16, always incl. first and last)\n"
      "  --sample-cols C       columns checked in each of those rows (default 256)\n"
      "  --seed S              input and sampling seed (default 1234)\n"
      "  --device I            CUDA device (default 0)\n"
      "  --json FILE           also write a moesim-bench/v1 results file\n"
      "  -h, --help            this text (needs no GPU)\n"
      "\n"
      "exit status: 0 ok, 1 a data check failed, 2 bad usage, 3 no CUDA device, 4 CUDA/cuBLAS error\n");
}

Options parse(int argc, char** argv) {
  Options o;
  bool m_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die(kExitUsage, "%s: %s needs a value (see --help)", kProg, a.c_str());
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(kExitOk);
    } else if (a == "--mode") {
      o.mode = val();
      if (o.mode != "gemm" && o.mode != "grouped")
        die(kExitUsage, "%s: --mode must be gemm or grouped, got '%s'", kProg, o.mode.c_str());
    } else if (a == "--m") {
      o.m = parse_int_list(kProg, a, val());
      m_given = true;
    } else if (a == "--nk") {
      o.shapes.clear();
      for (const auto& item : split(val(), ',')) {
        auto p = item.find('x');
        if (p == std::string::npos) die(kExitUsage, "%s: --nk item '%s' is not NxK", kProg, item.c_str());
        long long n = parse_size(kProg, a, item.substr(0, p)), k = parse_size(kProg, a, item.substr(p + 1));
        if (n <= 0 || k <= 0) die(kExitUsage, "%s: --nk item '%s' needs positive N and K", kProg, item.c_str());
        o.shapes.push_back({n, k});
      }
      if (o.shapes.empty()) die(kExitUsage, "%s: --nk needs at least one NxK", kProg);
    } else if (a == "--dtype") {
      o.dtypes.clear();
      for (const auto& d : split(val(), ',')) {
        if (d == "bf16") o.dtypes.push_back(DType::BF16);
        else if (d == "fp8" || d == "fp8_e4m3") o.dtypes.push_back(DType::FP8);
        else die(kExitUsage, "%s: unknown dtype '%s' (use bf16, fp8)", kProg, d.c_str());
      }
      if (o.dtypes.empty()) die(kExitUsage, "%s: --dtype needs bf16 and/or fp8", kProg);
    } else if (a == "--groups") {
      o.groups = parse_size(kProg, a, val());
      if (o.groups < 1) die(kExitUsage, "%s: --groups must be >= 1", kProg);
    } else if (a == "--group-m") {
      o.group_m = parse_int_list(kProg, a, val());
    } else if (a == "--impl") {
      o.impls = split(val(), ',');
      for (const auto& s : o.impls)
        if (s != "lt_loop" && s != "cublas_grouped")
          die(kExitUsage, "%s: unknown --impl '%s' (use lt_loop, cublas_grouped)", kProg, s.c_str());
    } else if (a == "--warmup") {
      o.warmup = static_cast<int>(parse_size(kProg, a, val()));
    } else if (a == "--iters") {
      o.iters = static_cast<int>(parse_size(kProg, a, val()));
      if (o.iters < 1) die(kExitUsage, "%s: --iters must be >= 1", kProg);
    } else if (a == "--no-flush-l2") {
      o.flush_l2 = false;
    } else if (a == "--workspace") {
      o.workspace = parse_size(kProg, a, val());
    } else if (a == "--sample-rows") {
      o.sample_rows = static_cast<int>(parse_size(kProg, a, val()));
      if (o.sample_rows < 1) die(kExitUsage, "%s: --sample-rows must be >= 1", kProg);
    } else if (a == "--sample-cols") {
      o.sample_cols = static_cast<int>(parse_size(kProg, a, val()));
      if (o.sample_cols < 1) die(kExitUsage, "%s: --sample-cols must be >= 1", kProg);
    } else if (a == "--seed") {
      o.seed = static_cast<unsigned>(parse_size(kProg, a, val()));
    } else if (a == "--device") {
      o.device = static_cast<int>(parse_size(kProg, a, val()));
    } else if (a == "--json") {
      o.json = val();
    } else {
      die(kExitUsage, "%s: unknown option '%s' (see --help)", kProg, a.c_str());
    }
  }
  if (!o.group_m.empty()) {
    if (o.mode != "grouped") die(kExitUsage, "%s: --group-m needs --mode grouped", kProg);
    if (m_given) die(kExitUsage, "%s: give --m or --group-m, not both", kProg);
    if (static_cast<long long>(o.group_m.size()) != o.groups)
      die(kExitUsage, "%s: --group-m has %zu entries but --groups is %lld", kProg, o.group_m.size(), o.groups);
  }
  for (long long m : o.m)
    if (m < 1) die(kExitUsage, "%s: every --m must be >= 1", kProg);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Inputs: value(idx) = (h(idx) mod 17 - 8) / 8, a multiple of 1/8 in [-1, 1], written on the device
// in the benchmark dtype (exact in BF16 and E4M3). The check reads the device buffers back, so it
// uses the very bytes the GEMM multiplied.
__host__ __device__ inline uint32_t mix32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

__global__ void fill_kernel(void* buf, size_t count, int is_fp8, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float v = static_cast<float>(static_cast<int>(mix32(i ^ (static_cast<uint64_t>(seed) << 40)) % 17u) - 8) * 0.125f;
    if (is_fp8) static_cast<__nv_fp8_storage_t*>(buf)[i] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
    else static_cast<__nv_bfloat16*>(buf)[i] = __float2bfloat16_rn(v);
  }
}

void fill(void* buf, size_t count, DType t, uint32_t seed, cudaStream_t s) {
  int blocks = static_cast<int>(std::min<size_t>((count + 255) / 256, 4096));
  fill_kernel<<<std::max(blocks, 1), 256, 0, s>>>(buf, count, t == DType::FP8, seed);
  MB_CUDA(cudaGetLastError());
}

// Host decoders (exact), independent of the CUDA headers' host paths.
float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float e4m3_to_float(uint8_t b) {
  int sign = b >> 7, e = (b >> 3) & 0xF, man = b & 0x7;
  float v;
  if (e == 0xF && man == 0x7) return NAN;
  if (e == 0) v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
  else v = std::ldexp(1.0f + man / 8.0f, e - 7);
  return sign ? -v : v;
}
float decode(const uint8_t* p, size_t i, DType t) {
  if (t == DType::FP8) return e4m3_to_float(p[i]);
  uint16_t b;
  std::memcpy(&b, p + 2 * i, 2);
  return bf16_to_float(b);
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt plan of one GEMM (TN, see the top of the file).
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
  std::string why;
  void destroy() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    op = nullptr;
    a = b = d = nullptr;
  }
};

LtPlan lt_plan(cublasLtHandle_t lt, DType t, long long m, long long n, long long k, size_t workspace) {
  LtPlan p;
  MB_CUBLAS(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  MB_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  MB_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  MB_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, dtype_cuda(t), k, n, k));
  MB_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, dtype_cuda(t), k, m, k));
  MB_CUBLAS(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_16BF, n, m, n));
  cublasLtMatmulPreference_t pref;
  MB_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  MB_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                 sizeof workspace));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.d, p.d, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    p.why = std::string("cuBLASLt has no algorithm for this case (") +
            (st != CUBLAS_STATUS_SUCCESS ? cublasGetStatusName(st) : "0 heuristic results") + ")";
    return p;
  }
  p.algo = res.algo;
  p.ok = true;
  return p;
}

void lt_run(cublasLtHandle_t lt, const LtPlan& p, const void* W, const void* X, void* Y, void* ws,
            size_t ws_bytes, cudaStream_t s) {
  const float alpha = 1.0f, beta = 0.0f;
  MB_CUBLAS(cublasLtMatmul(lt, p.op, &alpha, W, p.a, X, p.b, &beta, Y, p.d, Y, p.d, &p.algo, ws, ws_bytes, s));
}

// ---------------------------------------------------------------------------------------------
// Check of one GEMM block: sampled rows of Y (always the first and the last) and, in each,
// sampled columns (always the first and the last) against a CPU FP32-accumulated reference
// computed from the X and W bytes read back from the device.
struct CheckStats {
  long long checked = 0, wrong = 0;
  double max_rel = 0, max_abs = 0, max_over_tol = 0;
  std::vector<std::string> failures;  // one line per failed case
};

std::vector<long long> sample_indices(long long total, int want, std::mt19937_64& rng) {
  std::set<long long> s = {0, total - 1};
  if (total <= want) {
    for (long long i = 0; i < total; ++i) s.insert(i);
  } else {
    std::uniform_int_distribution<long long> u(0, total - 1);
    while (static_cast<int>(s.size()) < want) s.insert(u(rng));
  }
  return {s.begin(), s.end()};
}

// Returns the number of wrong entries of this block; updates stats.
// case_over: the largest |err| / bound of this block is folded into it.
long long check_block(const uint8_t* dX, const uint8_t* dW, const uint16_t* dY, DType t, long long m, long long n,
                      long long k, const Options& o, std::mt19937_64& rng, CheckStats& st, double& case_over) {
  const size_t eb = dtype_bytes(t);
  const Tolerance tol = tolerance_of(t);
  auto rows = sample_indices(m, o.sample_rows, rng);
  auto cols = sample_indices(n, o.sample_cols, rng);
  std::vector<uint8_t> xrow(k * eb), wrows(cols.size() * k * eb);
  std::vector<uint16_t> yrow(n);
  for (size_t c = 0; c < cols.size(); ++c)
    MB_CUDA(cudaMemcpy(wrows.data() + c * k * eb, dW + cols[c] * k * eb, k * eb, cudaMemcpyDeviceToHost));
  std::vector<float> wf(cols.size() * k);
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = decode(wrows.data(), i, t);
  std::vector<float> xf(k);
  long long wrong = 0;
  for (long long r : rows) {
    MB_CUDA(cudaMemcpy(xrow.data(), dX + r * k * eb, k * eb, cudaMemcpyDeviceToHost));
    MB_CUDA(cudaMemcpy(yrow.data(), dY + r * n, n * 2, cudaMemcpyDeviceToHost));
    for (long long l = 0; l < k; ++l) xf[l] = decode(xrow.data(), l, t);
    for (size_t c = 0; c < cols.size(); ++c) {
      const float* w = wf.data() + c * k;
      float ref = 0.f, absref = 0.f;  // FP32 accumulation (exact for these inputs, see Tolerance)
      for (long long l = 0; l < k; ++l) {
        ref += xf[l] * w[l];
        absref += std::fabs(xf[l] * w[l]);
      }
      double got = bf16_to_float(yrow[cols[c]]);
      double err = std::fabs(got - ref);
      double bound = tol.rtol * std::fabs(ref) + tol.atol_frac * absref;
      bool bad = !std::isfinite(got) || err > bound;
      ++st.checked;
      if (std::isfinite(got)) {
        st.max_abs = std::max(st.max_abs, err);
        st.max_rel = std::max(st.max_rel, err / std::max<double>(std::fabs(ref), 1.0));
        case_over = std::max(case_over, bound > 0 ? err / bound : (err > 0 ? 1e30 : 0.0));
      } else {
        case_over = 1e30;
      }
      if (bad) {
        if (wrong < 3)
          std::fprintf(stderr, "# mismatch: row %lld col %lld got %.6g want %.6g (bound %.3g)\n", r, cols[c], got,
                       ref, bound);
        ++wrong;
      }
    }
  }
  st.wrong += wrong;
  st.max_over_tol = std::max(st.max_over_tol, case_over);
  return wrong;
}

// ---------------------------------------------------------------------------------------------
struct Row {
  std::string dtype, impl;
  long long m, n, k, groups, m_total;
  std::vector<long long> m_per_group;
  double time_s, tflops, flops;
};

void print_header_row(bool grouped) {
  std::printf("#\n# %8s %14s %6s %7s %7s %7s %12s %10s %8s\n", "dtype", "impl", "groups", grouped ? "m/group" : "m",
              "n", "k", "time", "TFLOPS", "check");
  std::printf("# %8s %14s %6s %7s %7s %7s %12s %10s %8s\n", "", "", "", "(rows)", "", "", "(us)", "(1e12/s)",
              "(err/tol)");
}

void print_row(const Row& r, double over_tol) {
  std::printf("  %8s %14s %6lld %7lld %7lld %7lld %12.2f %10.2f %8.3f\n", r.dtype.c_str(), r.impl.c_str(), r.groups,
              r.m, r.n, r.k, r.time_s * 1e6, r.tflops, over_tol);
  std::fflush(stdout);
}

struct Context {
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  void* flush = nullptr;
  size_t flush_bytes = 0;
  Options opt;
  std::vector<std::string> skipped;
  std::vector<Row> rows;
  CheckStats stats;
  std::mt19937_64 rng;
};

void flush_l2(Context& c) {
  if (c.flush) MB_CUDA(cudaMemsetAsync(c.flush, 0, c.flush_bytes, c.stream));
}

bool fits(Context& c, size_t bytes, const std::string& label) {
  size_t free_b = 0, total_b = 0;
  MB_CUDA(cudaMemGetInfo(&free_b, &total_b));
  if (bytes > free_b / 10 * 9) {
    std::string why = label + ": needs " + std::to_string(bytes >> 20) + " MiB, " + std::to_string(free_b >> 20) +
                      " MiB free";
    std::printf("# skip %s\n", why.c_str());
    c.skipped.push_back(why);
    return false;
  }
  return true;
}

// One plain GEMM case.
void run_gemm_case(Context& c, DType t, long long m, const Shape& s) {
  const Options& o = c.opt;
  char label[128];
  std::snprintf(label, sizeof label, "%s m=%lld n=%lld k=%lld", dtype_name(t), m, s.n, s.k);
  size_t eb = dtype_bytes(t);
  size_t bx = m * s.k * eb, bw = s.n * s.k * eb, by = m * s.n * 2;
  if (!fits(c, bx + bw + by, label)) return;
  LtPlan plan = lt_plan(c.lt, t, m, s.n, s.k, o.workspace);
  if (!plan.ok) {
    std::printf("# skip %s: %s\n", label, plan.why.c_str());
    c.skipped.push_back(std::string(label) + ": " + plan.why);
    plan.destroy();
    return;
  }
  uint8_t *X, *W;
  uint16_t* Y;
  MB_CUDA(cudaMalloc(&X, bx));
  MB_CUDA(cudaMalloc(&W, bw));
  MB_CUDA(cudaMalloc(&Y, by));
  fill(X, m * s.k, t, o.seed, c.stream);
  fill(W, s.n * s.k, t, o.seed + 1, c.stream);
  MB_CUDA(cudaMemsetAsync(Y, 0xFF, by, c.stream));  // NaN: a GEMM that writes nothing fails the check
  lt_run(c.lt, plan, W, X, Y, c.workspace, o.workspace, c.stream);
  MB_CUDA(cudaStreamSynchronize(c.stream));
  double case_over = 0;
  long long wrong = check_block(X, W, Y, t, m, s.n, s.k, o, c.rng, c.stats, case_over);
  if (wrong) {
    std::string msg = std::string(label) + ": " + std::to_string(wrong) + " wrong entries";
    std::printf("# FAILED %s (not timed)\n", msg.c_str());
    c.stats.failures.push_back(msg);
  } else {
    double sec = median_seconds(c.stream, o.warmup, o.iters, [&] { flush_l2(c); },
                                [&] { lt_run(c.lt, plan, W, X, Y, c.workspace, o.workspace, c.stream); });
    Row r{dtype_name(t), "cublaslt", m, s.n, s.k, 1, m, {}, sec, 0, 2.0 * m * s.n * s.k};
    r.tflops = r.flops / sec / 1e12;
    print_row(r, case_over);
    c.rows.push_back(r);
  }
  MB_CUDA(cudaFree(X));
  MB_CUDA(cudaFree(W));
  MB_CUDA(cudaFree(Y));
  plan.destroy();
}

// One grouped case: G experts, expert g has mg[g] rows.
void run_grouped_case(Context& c, DType t, const std::vector<long long>& mg, const Shape& s) {
  const Options& o = c.opt;
  const long long G = static_cast<long long>(mg.size());
  long long total = 0;
  std::vector<long long> off(G);
  for (long long g = 0; g < G; ++g) {
    off[g] = total;
    total += mg[g];
  }
  long long m_label = (total + G / 2) / G;  // rows per group (exact when the groups are equal)
  char label[160];
  std::snprintf(label, sizeof label, "%s groups=%lld m/group=%lld n=%lld k=%lld", dtype_name(t), G, m_label, s.n,
                s.k);
  size_t eb = dtype_bytes(t);
  size_t bx = total * s.k * eb, bw = G * s.n * s.k * eb, by = total * s.n * 2;
  if (!fits(c, bx + bw + by, label)) return;
  uint8_t *X, *W;
  uint16_t* Y;
  MB_CUDA(cudaMalloc(&X, std::max<size_t>(bx, 1)));
  MB_CUDA(cudaMalloc(&W, bw));
  MB_CUDA(cudaMalloc(&Y, std::max<size_t>(by, 2)));
  fill(X, total * s.k, t, o.seed, c.stream);
  fill(W, G * s.n * s.k, t, o.seed + 1, c.stream);
  double flops = 2.0 * total * s.n * s.k;

  // Groups checked: the first, the last and up to 4 others; all of them when G <= 6.
  std::set<long long> check_groups = {0, G - 1};
  {
    std::uniform_int_distribution<long long> u(0, G - 1);
    for (int i = 0; i < 16 && static_cast<long long>(check_groups.size()) < std::min<long long>(G, 6); ++i)
      check_groups.insert(u(c.rng));
  }
  double case_over = 0;
  auto check_all = [&](const char* impl) -> bool {
    case_over = 0;
    long long wrong = 0;
    for (long long g : check_groups) {
      if (mg[g] == 0) continue;
      wrong += check_block(X + off[g] * s.k * eb, W + g * s.n * s.k * eb, Y + off[g] * s.n, t, mg[g], s.n, s.k, o,
                           c.rng, c.stats, case_over);
    }
    if (wrong) {
      std::string msg = std::string(label) + " impl=" + impl + ": " + std::to_string(wrong) + " wrong entries";
      std::printf("# FAILED %s (not timed)\n", msg.c_str());
      c.stats.failures.push_back(msg);
      return false;
    }
    return true;
  };
  auto record = [&](const char* impl, double sec) {
    Row r{dtype_name(t), impl, m_label, s.n, s.k, G, total, mg, sec, flops / sec / 1e12, flops};
    print_row(r, case_over);
    c.rows.push_back(r);
  };

  for (const auto& impl : o.impls) {
    if (impl == "lt_loop") {
      std::vector<LtPlan> plans(G);
      bool ok = true;
      for (long long g = 0; g < G && ok; ++g) {
        if (mg[g] == 0) continue;
        plans[g] = lt_plan(c.lt, t, mg[g], s.n, s.k, o.workspace);
        if (!plans[g].ok) {
          std::string why = std::string(label) + " impl=lt_loop: group " + std::to_string(g) + ": " + plans[g].why;
          std::printf("# skip %s\n", why.c_str());
          c.skipped.push_back(why);
          ok = false;
        }
      }
      auto launch = [&] {
        for (long long g = 0; g < G; ++g)
          if (mg[g] > 0)
            lt_run(c.lt, plans[g], W + g * s.n * s.k * eb, X + off[g] * s.k * eb, Y + off[g] * s.n, c.workspace,
                   o.workspace, c.stream);
      };
      if (ok) {
        MB_CUDA(cudaMemsetAsync(Y, 0xFF, std::max<size_t>(by, 2), c.stream));
        launch();
        MB_CUDA(cudaStreamSynchronize(c.stream));
        if (check_all("lt_loop"))
          record("lt_loop", median_seconds(c.stream, o.warmup, o.iters, [&] { flush_l2(c); }, launch,
                                           50000ULL + 20000ULL * static_cast<unsigned long long>(G)));
      }
      for (auto& p : plans) p.destroy();
    } else if (impl == "cublas_grouped") {
#if defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120500
      if (t != DType::BF16) {
        std::string why = std::string(label) + " impl=cublas_grouped: cublasGemmGroupedBatchedEx takes no FP8 inputs";
        std::printf("# skip %s\n", why.c_str());
        c.skipped.push_back(why);
        continue;
      }
      // cuBLAS terms per group: m = n (out features), n = tokens, k = k; A = W_g (op T), B = X_g.
      std::vector<cublasOperation_t> ta, tb;
      std::vector<int> mm, nn, kk, lda, ldb, ldc, gsize;
      std::vector<float> alpha, beta;
      std::vector<const void*> hA, hB;
      std::vector<void*> hC;
      bool too_big = false;
      for (long long g = 0; g < G; ++g) {
        if (mg[g] == 0) continue;
        if (s.n > INT32_MAX || s.k > INT32_MAX || mg[g] > INT32_MAX) too_big = true;
        ta.push_back(CUBLAS_OP_T);
        tb.push_back(CUBLAS_OP_N);
        mm.push_back(static_cast<int>(s.n));
        nn.push_back(static_cast<int>(mg[g]));
        kk.push_back(static_cast<int>(s.k));
        lda.push_back(static_cast<int>(s.k));
        ldb.push_back(static_cast<int>(s.k));
        ldc.push_back(static_cast<int>(s.n));
        gsize.push_back(1);
        alpha.push_back(1.0f);
        beta.push_back(0.0f);
        hA.push_back(W + g * s.n * s.k * eb);
        hB.push_back(X + off[g] * s.k * eb);
        hC.push_back(Y + off[g] * s.n);
      }
      if (too_big) die(kExitUsage, "%s: a dimension exceeds the 32-bit cublasGemmGroupedBatchedEx", kProg);
      int count = static_cast<int>(hA.size());
      const void** dA;
      const void** dB;
      void** dC;
      MB_CUDA(cudaMalloc(&dA, sizeof(void*) * std::max(count, 1)));
      MB_CUDA(cudaMalloc(&dB, sizeof(void*) * std::max(count, 1)));
      MB_CUDA(cudaMalloc(&dC, sizeof(void*) * std::max(count, 1)));
      // On c.stream (non-blocking): a plain cudaMemcpy from pageable memory may still be in flight.
      MB_CUDA(cudaMemcpyAsync(dA, hA.data(), sizeof(void*) * count, cudaMemcpyHostToDevice, c.stream));
      MB_CUDA(cudaMemcpyAsync(dB, hB.data(), sizeof(void*) * count, cudaMemcpyHostToDevice, c.stream));
      MB_CUDA(cudaMemcpyAsync(dC, hC.data(), sizeof(void*) * count, cudaMemcpyHostToDevice, c.stream));
      MB_CUDA(cudaStreamSynchronize(c.stream));
      auto call = [&] {
        return cublasGemmGroupedBatchedEx(c.blas, ta.data(), tb.data(), mm.data(), nn.data(), kk.data(),
                                          alpha.data(), dA, CUDA_R_16BF, lda.data(), dB, CUDA_R_16BF, ldb.data(),
                                          beta.data(), dC, CUDA_R_16BF, ldc.data(), count, gsize.data(),
                                          CUBLAS_COMPUTE_32F);
      };
      auto launch = [&] { MB_CUBLAS(call()); };
      MB_CUDA(cudaMemsetAsync(Y, 0xFF, std::max<size_t>(by, 2), c.stream));
      cublasStatus_t first = call();  // an unsupported case is a skip, not a crash
      MB_CUDA(cudaStreamSynchronize(c.stream));
      if (first != CUBLAS_STATUS_SUCCESS) {
        std::string why = std::string(label) + " impl=cublas_grouped: cublasGemmGroupedBatchedEx returned " +
                          cublasGetStatusName(first);
        std::printf("# skip %s\n", why.c_str());
        c.skipped.push_back(why);
      } else if (check_all("cublas_grouped")) {
        record("cublas_grouped", median_seconds(c.stream, o.warmup, o.iters, [&] { flush_l2(c); }, launch));
      }
      MB_CUDA(cudaFree(dA));
      MB_CUDA(cudaFree(dB));
      MB_CUDA(cudaFree(dC));
#else
      std::string why = std::string(label) + " impl=cublas_grouped: built against cuBLAS < 12.5 (no grouped GEMM)";
      std::printf("# skip %s\n", why.c_str());
      c.skipped.push_back(why);
#endif
    }
  }
  MB_CUDA(cudaFree(X));
  MB_CUDA(cudaFree(W));
  MB_CUDA(cudaFree(Y));
}

std::string cublas_version_string() {
  size_t v = cublasLtGetVersion();  // major*10000 + minor*100 + patch
  char buf[32];
  std::snprintf(buf, sizeof buf, "%zu.%zu.%zu", v / 10000, (v / 100) % 100, v % 100);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);  // handles --help before any CUDA call
  int gpus = require_devices(kProg);
  if (o.device < 0 || o.device >= gpus)
    die(kExitUsage, "%s: --device %d but only %d CUDA device(s)", kProg, o.device, gpus);
  MB_CUDA(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  MB_CUDA(cudaGetDeviceProperties(&prop, o.device));

  Context c;
  c.opt = o;
  c.rng.seed(o.seed);
  MB_CUBLAS(cublasLtCreate(&c.lt));
  MB_CUBLAS(cublasCreate(&c.blas));
  MB_CUDA(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
  MB_CUBLAS(cublasSetStream(c.blas, c.stream));
  MB_CUDA(cudaMalloc(&c.workspace, std::max<long long>(o.workspace, 1)));
  if (o.flush_l2 && prop.l2CacheSize > 0) {
    c.flush_bytes = 2 * static_cast<size_t>(prop.l2CacheSize);
    MB_CUDA(cudaMalloc(&c.flush, c.flush_bytes));
  }

  std::vector<DType> dtypes;
  int cc = prop.major * 10 + prop.minor;
  for (DType t : o.dtypes) {
    if (t == DType::FP8 && cc < 89) {
      char why[160];
      std::snprintf(why, sizeof why,
                    "fp8_e4m3: compute capability %d.%d < 8.9 (FP8 tensor cores need Ada, Hopper or newer)",
                    prop.major, prop.minor);
      std::printf("# skip %s\n", why);
      c.skipped.push_back(why);
      continue;
    }
    dtypes.push_back(t);
  }

  const bool grouped = o.mode == "grouped";
  std::string cublas = cublas_version_string();
  int rt = 0;
  MB_CUDA(cudaRuntimeGetVersion(&rt));
  std::printf("# %s  moesim-bench/v1  benchmark=%s\n", kProg, grouped ? "grouped_gemm" : "gemm");
  std::printf("# device %d: %s  cc %d.%d  %d SMs  L2 %d MiB  driver %s  CUDA runtime %s  cuBLAS %s\n", o.device,
              prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize >> 20,
              driver_version().c_str(), version_string(rt).c_str(), cublas.c_str());
  std::printf("# Y[m,n] = X[m,k] W[n,k]^T  cuBLASLt TN  compute FP32  output BF16  workspace %lld B\n", o.workspace);
  std::printf("# timing: CUDA events, median of %d iterations after %d warm-up, L2 %s before each\n", o.iters,
              o.warmup, o.flush_l2 ? "flushed" : "not flushed");
  std::printf("# check: %d rows x %d cols per GEMM vs CPU FP32 reference; |err| <= rtol |ref| + atol_frac sum|x w|\n",
              o.sample_rows, o.sample_cols);
  if (grouped) {
    std::printf("# grouped: %lld groups; impls:", o.groups);
    for (const auto& s : o.impls) std::printf(" %s", s.c_str());
    std::printf(" (lt_loop = %lld cublasLtMatmul calls in one stream; cublas_grouped = one "
                "cublasGemmGroupedBatchedEx)\n", o.groups);
  }
  print_header_row(grouped);

  for (DType t : dtypes) {
    for (const Shape& s : o.shapes) {
      if (!grouped) {
        for (long long m : o.m) run_gemm_case(c, t, m, s);
      } else if (!o.group_m.empty()) {
        run_grouped_case(c, t, o.group_m, s);
      } else {
        for (long long m : o.m) run_grouped_case(c, t, std::vector<long long>(o.groups, m), s);
      }
    }
  }

  const bool passed = c.stats.failures.empty();
  std::printf("#\n# check: %s  %lld entries checked, %lld wrong, max err/tol %.3g, max rel err %.3g\n",
              passed ? "passed" : "FAILED", c.stats.checked, c.stats.wrong, c.stats.max_over_tol, c.stats.max_rel);
  std::printf("# rows: %zu  skipped: %zu\n", c.rows.size(), c.skipped.size());

  if (!o.json.empty()) {
    JObj params;
    std::string shapes_json = jlist(o.shapes, [](const Shape& s) { return "[" + jint(s.n) + ", " + jint(s.k) + "]"; });
    std::vector<std::string> dnames;
    for (DType t : o.dtypes) dnames.push_back(dtype_name(t));
    params.add("mode", jstr(o.mode))
        .add("m", jlist_int(o.m))
        .add("nk", shapes_json)
        .add("dtypes", jlist_str(dnames))
        .add("warmup", jint(o.warmup))
        .add("iters", jint(o.iters))
        .add("statistic", jstr("median"))
        .add("timing", jstr("CUDA events around each iteration, all queued behind a spin kernel"))
        .add("l2_flush", jbool(o.flush_l2))
        .add("workspace_bytes", jint(o.workspace))
        .add("seed", jint(o.seed))
        .add("layout", jstr("Y[m,n] = X[m,k] W[n,k]^T row-major; cuBLASLt TN: A=W (k x n, op T), B=X (k x m), "
                            "D=Y (n x m), column-major"))
        .add("compute", jstr("CUBLAS_COMPUTE_32F, scale FP32, alpha 1, beta 0, D BF16"))
        .add("fp8", jstr("A and B E4M3, unit scales (no scale pointers), D BF16"))
        .add("inputs", jstr("multiples of 1/8 in [-1, 1], exact in BF16 and E4M3"))
        .add("check", jstr(std::to_string(o.sample_rows) + " rows x " + std::to_string(o.sample_cols) +
                           " cols per GEMM vs CPU FP32 reference from the device's inputs"))
        .add("tolerance", jstr("|err| <= 2^-7 |ref| + atol_frac sum|x w|; atol_frac 2^-12 bf16, 2^-9 fp8_e4m3"))
        .add("tflops", jstr("2 * sum(m_g) * n * k / time_s / 1e12"))
        .add("skipped", jlist_str(c.skipped));
    if (grouped) {
      params.add("groups", jint(o.groups))
          .add("group_m", o.group_m.empty() ? jnull() : jlist_int(o.group_m))
          .add("impls", jlist_str(o.impls))
          .add("grouped_as", jstr("lt_loop: one cublasLtMatmul per group in one stream (this cuBLASLt has no "
                                  "per-group-m grouped matmul); cublas_grouped: one cublasGemmGroupedBatchedEx, "
                                  "group_size 1 per expert (BF16 only)"))
          .add("row_m", jstr("rows of each group (rounded mean when --group-m gives unequal groups)"));
    }
    std::vector<JObj> rows;
    for (const Row& r : c.rows) {
      JObj j;
      j.add("m", jint(r.m)).add("n", jint(r.n)).add("k", jint(r.k)).add("groups", jint(r.groups));
      j.add("dtype", jstr(r.dtype)).add("time_s", jnum(r.time_s)).add("tflops", jnum(r.tflops));
      j.add("impl", jstr(r.impl)).add("m_total", jint(r.m_total));
      if (grouped) j.add("m_per_group", jlist_int(r.m_per_group));
      rows.push_back(j);
    }
    JObj check;
    check.add("passed", jbool(passed))
        .add("max_rel_error", jnum(c.stats.max_rel))
        .add("max_abs_error", jnum(c.stats.max_abs))
        .add("max_error_over_tolerance", jnum(c.stats.max_over_tol))
        .add("checked_entries", jint(c.stats.checked))
        .add("wrong_entries", jint(c.stats.wrong))
        .add("failed_cases", jlist_str(c.stats.failures))
        .add("max_rel_error_definition", jstr("|got - ref| / max(|ref|, 1)"));
    write_results(o.json, grouped ? "grouped_gemm" : "gemm", device_record(o.device, gpus, cublas), params, rows,
                  check);
    std::printf("# wrote %s\n", o.json.c_str());
  }

  if (c.flush) MB_CUDA(cudaFree(c.flush));
  MB_CUDA(cudaFree(c.workspace));
  cublasDestroy(c.blas);
  cublasLtDestroy(c.lt);
  MB_CUDA(cudaStreamDestroy(c.stream));
  return passed ? kExitOk : kExitCheckFailed;
}
