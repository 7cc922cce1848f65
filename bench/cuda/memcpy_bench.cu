// memcpy_bench: copy bandwidth of the paths an MoE step moves data over.
//
// Paths (row `path`), each over a size sweep:
//   hbm             device-to-device on one GPU: cudaMemcpyAsync (engine copy_engine: issued as a
//                   memcpy; the driver may run a same-device copy on its own kernel) and an SM
//                   copy kernel (engine sm: 16-byte vector loads/stores, grid-stride);
//   host_to_device  pinned host -> GPU, cudaMemcpyAsync (copy_engine);
//   device_to_host  GPU -> pinned host, cudaMemcpyAsync (copy_engine);
//   nvlink_p2p      GPU a -> GPU b with peer access enabled (cudaDeviceEnablePeerAccess), only
//                   with 2 or more GPUs: cudaMemcpyPeerAsync (copy_engine) and the SM copy kernel
//                   on GPU a writing into GPU b's memory (sm); unidirectional, and bidirectional
//                   (a -> b and b -> a at the same time). Without peer access the pair is skipped
//                   (a staged copy through the host would not measure the GPU-GPU link). The row
//                   says nvlink_p2p whatever the link is; parameters.p2p gives the runtime's
//                   performance rank of each pair.
//
// GBps = bytes_moved / time_s / 1e9 (1 GB = 1e9 B). bytes_moved counts, for hbm, the bytes read
// plus the bytes written (2 x bytes: the convention moesim/calibration.py reads for hbm rows, as
// BabelStream's); for host paths and unidirectional nvlink_p2p, the bytes copied; for a
// bidirectional row, the bytes of both directions together (2 x bytes, bytes being the size of
// each direction's copy). Every row also has GBps_copied = bytes / time_s / 1e9.
//
// Correctness first: each source holds a rank-encoded pattern (word i of GPU r's data is
// pattern(i, r); the host's rank is 0xFFFF), so a lost, shifted, stale or wrong-source word is
// seen. Before timing, the destination is set to 0xAB bytes, one copy is made and every word of
// the destination (and a 16-byte guard after it) is compared; after timing it is compared again.
// A case that fails is not timed (or not recorded) and the exit status is 1.
#include "common.h"

#include <functional>
#include <utility>

using namespace mb;

namespace {

const char* kProg = "memcpy_bench";
const uint32_t kHostRank = 0xFFFF;
const uint32_t kGuardWord = 0xABABABABu;
const size_t kGuardBytes = 16;

struct Options {
  std::vector<long long> sizes = {4LL << 10,  16LL << 10,  64LL << 10,  256LL << 10, 1LL << 20,
                                  4LL << 20,  16LL << 20,  64LL << 20,  256LL << 20, 1LL << 30};
  std::vector<std::string> paths = {"hbm", "host_to_device", "device_to_host", "nvlink_p2p"};
  std::vector<std::string> engines = {"copy_engine", "sm"};
  int device = 0;
  bool all_pairs = false, bidirectional = true;
  int warmup = 5, iters = 20, batch = 0;
  std::string json;
};

void usage(FILE* out) {
  std::fprintf(out,
      "usage: memcpy_bench [options]\n"
      "Copy bandwidth: HBM device-to-device (cudaMemcpyAsync and an SM copy kernel), pinned host <->\n"
      "device, and GPU <-> GPU peer copies (unidirectional and bidirectional) when there are 2+ GPUs.\n"
      "Data are verified (rank-encoded pattern) before and after timing (CUDA events, median).\n"
      "\n"
      "  --sizes LIST      bytes per copy, K/M/G suffixes (default 4K,16K,...,1G, x4 steps);\n"
      "                    rounded down to a multiple of 16\n"
      "  --paths LIST      hbm,host_to_device,device_to_host,nvlink_p2p (aliases h2d, d2h, p2p;\n"
      "                    default all)\n"
      "  --engines LIST    copy_engine,sm (default both; host paths use copy_engine only)\n"
      "  --device I        GPU of the hbm and host paths, and first GPU of the default pairs (default 0)\n"
      "  --all-pairs       nvlink_p2p over every ordered GPU pair (default: --device <-> each other GPU)\n"
      "  --no-bidirectional  nvlink_p2p unidirectional only\n"
      "  --warmup N        untimed samples per case (default 5)\n"
      "  --iters N         timed samples per case; the median is reported (default 20)\n"
      "  --batch N         copies per timed sample (default 0 = auto: 64 MiB per sample, 1..100 copies)\n"
      "  --json FILE       also write a moesim-bench/v1 results file\n"
      "  -h, --help        this text (needs no GPU)\n"
      "\n"
      "GBps = bytes_moved / time / 1e9; hbm counts bytes read + written (2 x size), bidirectional both\n"
      "directions (2 x size), the rest the bytes copied; GBps_copied = size / time / 1e9.\n"
      "exit status: 0 ok, 1 a data check failed, 2 bad usage, 3 no CUDA device, 4 CUDA error\n");
}

std::string canonical_path(const std::string& p) {
  if (p == "h2d") return "host_to_device";
  if (p == "d2h") return "device_to_host";
  if (p == "p2p" || p == "nvlink") return "nvlink_p2p";
  return p;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die(kExitUsage, "%s: %s needs a value (see --help)", kProg, a.c_str());
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(kExitOk);
    } else if (a == "--sizes") {
      o.sizes = parse_int_list(kProg, a, val());
    } else if (a == "--paths") {
      o.paths.clear();
      for (const auto& p : split(val(), ',')) {
        std::string c = canonical_path(p);
        if (c != "hbm" && c != "host_to_device" && c != "device_to_host" && c != "nvlink_p2p")
          die(kExitUsage, "%s: unknown path '%s' (use hbm, host_to_device, device_to_host, nvlink_p2p)", kProg,
              p.c_str());
        o.paths.push_back(c);
      }
      if (o.paths.empty()) die(kExitUsage, "%s: --paths needs at least one path", kProg);
    } else if (a == "--engines") {
      o.engines = split(val(), ',');
      for (const auto& e : o.engines)
        if (e != "copy_engine" && e != "sm")
          die(kExitUsage, "%s: unknown engine '%s' (use copy_engine, sm)", kProg, e.c_str());
      if (o.engines.empty()) die(kExitUsage, "%s: --engines needs copy_engine and/or sm", kProg);
    } else if (a == "--device") {
      o.device = static_cast<int>(parse_size(kProg, a, val()));
    } else if (a == "--all-pairs") {
      o.all_pairs = true;
    } else if (a == "--no-bidirectional") {
      o.bidirectional = false;
    } else if (a == "--warmup") {
      o.warmup = static_cast<int>(parse_size(kProg, a, val()));
    } else if (a == "--iters") {
      o.iters = static_cast<int>(parse_size(kProg, a, val()));
      if (o.iters < 1) die(kExitUsage, "%s: --iters must be >= 1", kProg);
    } else if (a == "--batch") {
      o.batch = static_cast<int>(parse_size(kProg, a, val()));
    } else if (a == "--json") {
      o.json = val();
    } else {
      die(kExitUsage, "%s: unknown option '%s' (see --help)", kProg, a.c_str());
    }
  }
  for (auto& s : o.sizes) {
    s = s / 16 * 16;
    if (s < 16) die(kExitUsage, "%s: every size must be >= 16 bytes", kProg);
  }
  return o;
}

bool has(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// ---------------------------------------------------------------------------------------------
__host__ __device__ inline uint32_t pattern(size_t i, uint32_t rank) {
  uint64_t x = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ULL + (static_cast<uint64_t>(rank) << 48);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return static_cast<uint32_t>(x) ^ (0x85EBCA77u * (rank + 1));
}

__global__ void fill_pattern(uint32_t* p, size_t words, uint32_t rank) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    p[i] = pattern(i, rank);
}

// Counts words of p[0, words) that differ from pattern(i, rank), or from `constant` when
// use_constant; first[0] gets the smallest bad index.
__global__ void verify_words(const uint32_t* p, size_t words, uint32_t rank, int use_constant, uint32_t constant,
                             unsigned long long* bad, unsigned long long* first) {
  unsigned long long local = 0, lo = ~0ULL;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t want = use_constant ? constant : pattern(i, rank);
    if (p[i] != want) {
      ++local;
      lo = lo < i ? lo : i;
    }
  }
  if (local) {
    atomicAdd(bad, local);
    atomicMin(first, lo);
  }
}

__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n16) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    dst[i] = a;
    dst[i + stride] = b;
    dst[i + 2 * stride] = c;
    dst[i + 3 * stride] = d;
  }
  for (; i < n16; i += stride) dst[i] = src[i];
}

// Per-GPU state: source (pattern of this GPU's rank), destination, check counters, stream.
struct Gpu {
  int index = -1, sms = 0;
  uint32_t* src = nullptr;
  uint32_t* dst = nullptr;
  unsigned long long* counters = nullptr;  // [bad, first]
  cudaStream_t stream = nullptr;
};

struct Context {
  Options opt;
  long long max_bytes = 0;
  std::vector<Gpu> gpus;  // indexed by device; allocated on first use
  uint32_t* host_src = nullptr;
  uint32_t* host_dst = nullptr;
  std::vector<JObj> rows;
  std::vector<std::string> skipped, failures;
  long long verified_bytes = 0;
};

int grid_for(size_t n16, int sms) {
  size_t blocks = (n16 + 255) / 256;
  return static_cast<int>(std::max<size_t>(1, std::min<size_t>(blocks, static_cast<size_t>(sms) * 8)));
}

Gpu& gpu(Context& c, int dev) {
  Gpu& g = c.gpus[dev];
  if (g.index >= 0) return g;
  g.index = dev;
  MB_CUDA(cudaSetDevice(dev));
  MB_CUDA(cudaDeviceGetAttribute(&g.sms, cudaDevAttrMultiProcessorCount, dev));
  size_t bytes = static_cast<size_t>(c.max_bytes) + kGuardBytes;
  MB_CUDA(cudaMalloc(&g.src, bytes));
  MB_CUDA(cudaMalloc(&g.dst, bytes));
  MB_CUDA(cudaMalloc(&g.counters, 2 * sizeof(unsigned long long)));
  MB_CUDA(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
  size_t words = bytes / 4;
  fill_pattern<<<grid_for(words / 4 + 1, g.sms), 256, 0, g.stream>>>(g.src, words, static_cast<uint32_t>(dev));
  MB_CUDA(cudaGetLastError());
  MB_CUDA(cudaStreamSynchronize(g.stream));
  return g;
}

// Mismatched words of device buffer p (on dev) over [0, bytes) against rank's pattern, plus the
// guard after it against kGuardWord. Prints the first bad index.
long long verify_device(Context& c, int dev, const uint32_t* p, long long bytes, uint32_t rank, const char* what) {
  Gpu& g = gpu(c, dev);
  MB_CUDA(cudaSetDevice(dev));
  // Everything on g.stream (non-blocking: plain cudaMemcpy on the legacy stream would not order).
  unsigned long long init[2] = {0, ~0ULL}, out[2], guard[2];
  MB_CUDA(cudaMemcpyAsync(g.counters, init, sizeof init, cudaMemcpyHostToDevice, g.stream));
  size_t words = bytes / 4;
  verify_words<<<grid_for(words / 4 + 1, g.sms), 256, 0, g.stream>>>(p, words, rank, 0, 0, g.counters,
                                                                    g.counters + 1);
  MB_CUDA(cudaGetLastError());
  MB_CUDA(cudaMemcpyAsync(out, g.counters, sizeof out, cudaMemcpyDeviceToHost, g.stream));
  MB_CUDA(cudaStreamSynchronize(g.stream));
  MB_CUDA(cudaMemcpyAsync(g.counters, init, sizeof init, cudaMemcpyHostToDevice, g.stream));
  verify_words<<<1, 32, 0, g.stream>>>(p + words, kGuardBytes / 4, 0, 1, kGuardWord, g.counters, g.counters + 1);
  MB_CUDA(cudaGetLastError());
  MB_CUDA(cudaMemcpyAsync(guard, g.counters, sizeof guard, cudaMemcpyDeviceToHost, g.stream));
  MB_CUDA(cudaStreamSynchronize(g.stream));
  if (out[0])
    std::fprintf(stderr, "# mismatch %s: %llu of %zu words wrong, first at word %llu\n", what, out[0], words, out[1]);
  if (guard[0]) std::fprintf(stderr, "# mismatch %s: the copy wrote past its end\n", what);
  c.verified_bytes += bytes;
  return static_cast<long long>(out[0] + guard[0]);
}

long long verify_host(Context& c, const uint32_t* p, long long bytes, uint32_t rank, const char* what) {
  size_t words = bytes / 4;
  long long bad = 0, first = -1;
  for (size_t i = 0; i < words; ++i)
    if (p[i] != pattern(i, rank)) {
      if (first < 0) first = static_cast<long long>(i);
      ++bad;
    }
  for (size_t i = 0; i < kGuardBytes / 4; ++i) bad += p[words + i] != kGuardWord;
  if (bad) std::fprintf(stderr, "# mismatch %s: %lld words wrong (first %lld)\n", what, bad, first);
  c.verified_bytes += bytes;
  return bad;
}

void clear_device(Context& c, int dev, uint32_t* p, long long bytes) {
  Gpu& g = gpu(c, dev);
  MB_CUDA(cudaSetDevice(dev));
  MB_CUDA(cudaMemsetAsync(p, 0xAB, bytes + kGuardBytes, g.stream));
  MB_CUDA(cudaStreamSynchronize(g.stream));
}

// ---------------------------------------------------------------------------------------------
struct Case {
  Case(std::string path_, std::string direction_, std::string engine_, std::string src_, std::string dst_,
       long long bytes_, long long moved_, int timing_device_)
      : path(std::move(path_)), direction(std::move(direction_)), engine(std::move(engine_)), src(std::move(src_)),
        dst(std::move(dst_)), bytes(bytes_), bytes_moved(moved_), timing_device(timing_device_) {}
  std::string path, direction, engine, src, dst;
  long long bytes, bytes_moved;
  int timing_device;              // events and the spin kernel live on this GPU's stream
  std::function<void()> clear;    // set every destination to 0xAB (synchronous)
  std::function<void()> issue;    // enqueue one copy (both directions when bidirectional)
  std::function<void()> sync;     // wait for every stream involved
  std::function<long long()> verify;  // wrong words over every destination
};

void print_header() {
  std::printf("#\n# %15s %14s %12s %6s %6s %12s %8s %12s %10s %10s\n", "path", "direction", "engine", "src", "dst",
              "size", "batch", "time", "GBps", "GBps_copy");
  std::printf("# %15s %14s %12s %6s %6s %12s %8s %12s %10s %10s\n", "", "", "", "", "", "(B)", "", "(us)", "(GB/s)",
              "(GB/s)");
}

void run_case(Context& c, Case& k) {
  const Options& o = c.opt;
  std::string label = k.path + " " + k.direction + " " + k.engine + " " + k.src + "->" + k.dst + " " +
                      std::to_string(k.bytes) + " B";
  k.clear();
  MB_CUDA(cudaSetDevice(k.timing_device));
  k.issue();
  k.sync();
  if (long long bad = k.verify()) {
    c.failures.push_back(label + ": " + std::to_string(bad) + " wrong words before timing");
    std::printf("# FAILED %s (not timed)\n", c.failures.back().c_str());
    return;
  }
  int batch = o.batch > 0 ? o.batch
                          : static_cast<int>(std::max<long long>(1, std::min<long long>(100, (64LL << 20) / k.bytes)));
  MB_CUDA(cudaSetDevice(k.timing_device));
  double sample = median_seconds(
      c.gpus[k.timing_device].stream, o.warmup, o.iters, [] {},
      [&] {
        for (int b = 0; b < batch; ++b) k.issue();
      },
      20000ULL * batch);
  k.sync();
  if (long long bad = k.verify()) {
    c.failures.push_back(label + ": " + std::to_string(bad) + " wrong words after timing");
    std::printf("# FAILED %s (not recorded)\n", c.failures.back().c_str());
    return;
  }
  double t = sample / batch;
  double gbps = k.bytes_moved / t / 1e9, copied = k.bytes / t / 1e9;
  std::printf("  %15s %14s %12s %6s %6s %12lld %8d %12.2f %10.2f %10.2f\n", k.path.c_str(), k.direction.c_str(),
              k.engine.c_str(), k.src.c_str(), k.dst.c_str(), k.bytes, batch, t * 1e6, gbps, copied);
  std::fflush(stdout);
  JObj r;
  r.add("path", jstr(k.path)).add("direction", jstr(k.direction)).add("engine", jstr(k.engine));
  r.add("bytes", jint(k.bytes)).add("time_s", jnum(t)).add("GBps", jnum(gbps));
  r.add("bytes_moved", jint(k.bytes_moved)).add("GBps_copied", jnum(copied));
  r.add("src", jstr(k.src)).add("dst", jstr(k.dst)).add("batch", jint(batch));
  c.rows.push_back(r);
}

std::string gname(int d) { return "gpu" + std::to_string(d); }

void run_hbm(Context& c, const std::string& engine, long long bytes) {
  int d = c.opt.device;
  Gpu& g = gpu(c, d);
  Case k("hbm", "unidirectional", engine, gname(d), gname(d), bytes, 2 * bytes, d);
  k.clear = [&] { clear_device(c, d, g.dst, bytes); };
  if (engine == "copy_engine")
    k.issue = [&] { MB_CUDA(cudaMemcpyAsync(g.dst, g.src, bytes, cudaMemcpyDeviceToDevice, g.stream)); };
  else
    k.issue = [&] {
      size_t n16 = bytes / 16;
      copy_kernel<<<grid_for(n16, g.sms), 256, 0, g.stream>>>(reinterpret_cast<const uint4*>(g.src),
                                                             reinterpret_cast<uint4*>(g.dst), n16);
      MB_CUDA(cudaGetLastError());
    };
  k.sync = [&] { MB_CUDA(cudaStreamSynchronize(g.stream)); };
  k.verify = [&] { return verify_device(c, d, g.dst, bytes, d, "hbm"); };
  run_case(c, k);
}

void run_host(Context& c, bool to_device, long long bytes) {
  int d = c.opt.device;
  Gpu& g = gpu(c, d);
  Case k(to_device ? "host_to_device" : "device_to_host", "unidirectional", "copy_engine",
         to_device ? "host" : gname(d), to_device ? gname(d) : "host", bytes, bytes, d);
  if (to_device) {
    k.clear = [&] { clear_device(c, d, g.dst, bytes); };
    k.issue = [&] { MB_CUDA(cudaMemcpyAsync(g.dst, c.host_src, bytes, cudaMemcpyHostToDevice, g.stream)); };
    k.verify = [&] { return verify_device(c, d, g.dst, bytes, kHostRank, "host_to_device"); };
  } else {
    k.clear = [&] { std::memset(c.host_dst, 0xAB, bytes + kGuardBytes); };
    k.issue = [&] { MB_CUDA(cudaMemcpyAsync(c.host_dst, g.src, bytes, cudaMemcpyDeviceToHost, g.stream)); };
    k.verify = [&] { return verify_host(c, c.host_dst, bytes, d, "device_to_host"); };
  }
  k.sync = [&] { MB_CUDA(cudaStreamSynchronize(g.stream)); };
  run_case(c, k);
}

// a -> b (and b -> a when bidirectional), on a's stream (b's for the reverse copy).
void run_p2p(Context& c, int a, int b, bool bidir, const std::string& engine, long long bytes) {
  Gpu& ga = gpu(c, a);
  Gpu& gb = gpu(c, b);
  Case k("nvlink_p2p", bidir ? "bidirectional" : "unidirectional", engine, gname(a), gname(b), bytes,
         bidir ? 2 * bytes : bytes, a);
  cudaEvent_t fork = nullptr, join = nullptr;
  if (bidir) {
    MB_CUDA(cudaSetDevice(a));
    MB_CUDA(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    MB_CUDA(cudaSetDevice(b));
    MB_CUDA(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  }
  auto one = [&](Gpu& from, Gpu& to) {  // enqueue from -> to on from's stream (from must be current)
    if (engine == "copy_engine") {
      MB_CUDA(cudaMemcpyPeerAsync(to.dst, to.index, from.src, from.index, bytes, from.stream));
    } else {
      size_t n16 = bytes / 16;
      copy_kernel<<<grid_for(n16, from.sms), 256, 0, from.stream>>>(reinterpret_cast<const uint4*>(from.src),
                                                                   reinterpret_cast<uint4*>(to.dst), n16);
      MB_CUDA(cudaGetLastError());
    }
  };
  k.clear = [&] {
    clear_device(c, b, gb.dst, bytes);
    if (bidir) clear_device(c, a, ga.dst, bytes);
  };
  k.issue = [&] {  // called with a current; leaves a current
    if (!bidir) {
      one(ga, gb);
      return;
    }
    MB_CUDA(cudaEventRecord(fork, ga.stream));
    MB_CUDA(cudaSetDevice(b));
    MB_CUDA(cudaStreamWaitEvent(gb.stream, fork, 0));
    one(gb, ga);
    MB_CUDA(cudaEventRecord(join, gb.stream));
    MB_CUDA(cudaSetDevice(a));
    one(ga, gb);
    MB_CUDA(cudaStreamWaitEvent(ga.stream, join, 0));
  };
  k.sync = [&] {
    MB_CUDA(cudaStreamSynchronize(ga.stream));
    MB_CUDA(cudaStreamSynchronize(gb.stream));
  };
  std::string what = "nvlink_p2p " + gname(a) + "->" + gname(b);
  std::string back = "nvlink_p2p " + gname(b) + "->" + gname(a);
  k.verify = [&] {
    long long bad = verify_device(c, b, gb.dst, bytes, a, what.c_str());
    if (bidir) bad += verify_device(c, a, ga.dst, bytes, b, back.c_str());
    MB_CUDA(cudaSetDevice(a));
    return bad;
  };
  run_case(c, k);
  if (fork) MB_CUDA(cudaEventDestroy(fork));
  if (join) MB_CUDA(cudaEventDestroy(join));
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);  // handles --help before any CUDA call
  int ngpu = require_devices(kProg);
  if (o.device < 0 || o.device >= ngpu)
    die(kExitUsage, "%s: --device %d but only %d CUDA device(s)", kProg, o.device, ngpu);

  Context c;
  c.opt = o;
  c.max_bytes = *std::max_element(o.sizes.begin(), o.sizes.end());
  c.gpus.resize(ngpu);
  MB_CUDA(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  MB_CUDA(cudaGetDeviceProperties(&prop, o.device));
  int rt = 0;
  MB_CUDA(cudaRuntimeGetVersion(&rt));

  // GPU pairs for nvlink_p2p, with peer access enabled both ways; others skipped with a reason.
  std::vector<std::pair<int, int>> pairs;
  std::vector<JObj> p2p_info;
  if (has(o.paths, "nvlink_p2p")) {
    if (ngpu < 2) {
      c.skipped.push_back("nvlink_p2p: only 1 CUDA device");
      std::printf("# skip nvlink_p2p: only 1 CUDA device\n");
    }
    for (int a = 0; a < ngpu; ++a)
      for (int b = 0; b < ngpu; ++b) {
        if (a == b) continue;
        if (!o.all_pairs && a != o.device) continue;  // default: --device <-> each other GPU
        int ab = 0, ba = 0, rank = -1;
        MB_CUDA(cudaDeviceCanAccessPeer(&ab, a, b));
        MB_CUDA(cudaDeviceCanAccessPeer(&ba, b, a));
        if (ab && ba) cudaDeviceGetP2PAttribute(&rank, cudaDevP2PAttrPerformanceRank, a, b);
        JObj info;
        info.add("src", jint(a)).add("dst", jint(b)).add("peer_access", jbool(ab && ba)).add("performance_rank",
                                                                                           jint(rank));
        p2p_info.push_back(info);
        if (!(ab && ba)) {
          std::string why = "nvlink_p2p " + gname(a) + "<->" + gname(b) + ": no peer access";
          std::printf("# skip %s\n", why.c_str());
          c.skipped.push_back(why);
          continue;
        }
        for (auto [x, y] : {std::pair<int, int>{a, b}, std::pair<int, int>{b, a}}) {
          MB_CUDA(cudaSetDevice(x));
          cudaError_t e = cudaDeviceEnablePeerAccess(y, 0);
          if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
          else MB_CUDA(e);
        }
        pairs.emplace_back(a, b);
      }
    MB_CUDA(cudaSetDevice(o.device));
  }

  bool host_paths = has(o.paths, "host_to_device") || has(o.paths, "device_to_host");
  if (host_paths) {
    MB_CUDA(cudaMallocHost(&c.host_src, c.max_bytes + kGuardBytes));
    MB_CUDA(cudaMallocHost(&c.host_dst, c.max_bytes + kGuardBytes));
    for (size_t i = 0; i < (c.max_bytes + kGuardBytes) / 4; ++i) c.host_src[i] = pattern(i, kHostRank);
  }

  std::printf("# %s  moesim-bench/v1  benchmark=memcpy\n", kProg);
  std::printf("# device %d: %s  cc %d.%d  %d SMs  GPUs %d  driver %s  CUDA runtime %s\n", o.device, prop.name,
              prop.major, prop.minor, prop.multiProcessorCount, ngpu, driver_version().c_str(),
              version_string(rt).c_str());
  std::printf("# timing: CUDA events, median of %d samples after %d warm-up; a sample is --batch copies (%s)\n",
              o.iters, o.warmup, o.batch > 0 ? std::to_string(o.batch).c_str() : "auto");
  std::printf("# GBps = bytes moved / time / 1e9: hbm counts read + written (2 x size), bidirectional both "
              "directions; GBps_copy = size / time / 1e9\n");
  std::printf("# check: every destination word (rank-encoded pattern) and a 16 B guard, before and after timing\n");
  print_header();

  for (const std::string& path : o.paths) {
    for (long long bytes : o.sizes) {
      if (path == "hbm") {
        for (const auto& e : o.engines) run_hbm(c, e, bytes);
      } else if (path == "host_to_device" || path == "device_to_host") {
        if (has(o.engines, "copy_engine")) run_host(c, path == "host_to_device", bytes);
      } else {
        for (auto [a, b] : pairs)
          for (const auto& e : o.engines) {
            run_p2p(c, a, b, false, e, bytes);
            if (!o.all_pairs) run_p2p(c, b, a, false, e, bytes);
            if (o.bidirectional && (!o.all_pairs || a < b)) run_p2p(c, a, b, true, e, bytes);
          }
      }
    }
  }
  if (host_paths && !has(o.engines, "copy_engine"))
    c.skipped.push_back("host_to_device/device_to_host: measured with copy_engine only");

  const bool passed = c.failures.empty();
  std::printf("#\n# check: %s  %lld bytes verified, %zu failed cases\n# rows: %zu  skipped: %zu\n",
              passed ? "passed" : "FAILED", c.verified_bytes, c.failures.size(), c.rows.size(), c.skipped.size());

  if (!o.json.empty()) {
    JObj params;
    params.add("sizes", jlist_int(o.sizes))
        .add("paths", jlist_str(o.paths))
        .add("engines", jlist_str(o.engines))
        .add("device", jint(o.device))
        .add("all_pairs", jbool(o.all_pairs))
        .add("bidirectional", jbool(o.bidirectional))
        .add("warmup", jint(o.warmup))
        .add("iters", jint(o.iters))
        .add("batch", o.batch > 0 ? jint(o.batch) : jstr("auto: 64 MiB per sample, 1..100 copies"))
        .add("statistic", jstr("median of per-sample time / batch"))
        .add("timing", jstr("CUDA events around each sample, all queued behind a spin kernel"))
        .add("GBps", jstr("bytes_moved / time_s / 1e9; bytes_moved = 2 x bytes for hbm (read + written) and "
                          "for bidirectional rows (both directions), bytes otherwise"))
        .add("GBps_copied", jstr("bytes / time_s / 1e9"))
        .add("pinned_host", jbool(host_paths))
        .add("pattern", jstr("uint32 word i of rank r's data = pattern(i, r); host rank 0xFFFF; destination "
                             "preset to 0xAB, checked in full with a 16-byte guard before and after timing"))
        .add("sm_copy", jstr("grid-stride uint4 copy, 256 threads x up to 8 blocks per SM, launched on the "
                             "source GPU (for nvlink_p2p it writes into the peer's memory)"))
        .add("p2p", jlist(p2p_info, [](const JObj& j) { return j.compact(); }))
        .add("skipped", jlist_str(c.skipped));
    JObj check;
    check.add("passed", jbool(passed))
        .add("verified_bytes", jint(c.verified_bytes))
        .add("failed_cases", jlist_str(c.failures));
    write_results(o.json, "memcpy", device_record(o.device, ngpu, ""), params, c.rows, check);
    std::printf("# wrote %s\n", o.json.c_str());
  }

  for (auto& g : c.gpus) {
    if (g.index < 0) continue;
    cudaSetDevice(g.index);
    cudaFree(g.src);
    cudaFree(g.dst);
    cudaFree(g.counters);
    cudaStreamDestroy(g.stream);
  }
  if (c.host_src) cudaFreeHost(c.host_src);
  if (c.host_dst) cudaFreeHost(c.host_dst);
  return passed ? kExitOk : kExitCheckFailed;
}
