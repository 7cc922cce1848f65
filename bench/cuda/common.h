// Shared helpers of the moesim CUDA microbenchmarks (gemm_bench.cu, memcpy_bench.cu):
// exit codes, CUDA error checks, device discovery, a tiny JSON writer, list parsing and the
// median timer. Header-only: each benchmark is one translation unit.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace mb {

// ---------------------------------------------------------------------------------------------
// Exit codes (the same for every benchmark; README.md lists them).
enum ExitCode : int {
  kExitOk = 0,          // every case passed its data check (and was timed)
  kExitCheckFailed = 1, // a data check failed: results are wrong, nothing wrong was timed
  kExitUsage = 2,       // bad command line
  kExitNoDevice = 3,    // no CUDA device (or no usable driver): the GPU-less path
  kExitRuntime = 4,     // a CUDA / cuBLAS call failed
};

[[noreturn]] inline void die(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::exit(code);
}

#define MB_CUDA(call)                                                                           \
  do {                                                                                          \
    cudaError_t mb_err_ = (call);                                                               \
    if (mb_err_ != cudaSuccess)                                                                 \
      ::mb::die(::mb::kExitRuntime, "error: %s failed at %s:%d: %s (%s)", #call, __FILE__,      \
                __LINE__, cudaGetErrorName(mb_err_), cudaGetErrorString(mb_err_));              \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Device discovery. Called after --help has been handled, so --help never touches CUDA.
// Prints ONE line and exits kExitNoDevice when the runtime reports no usable device.
inline int require_devices(const char* prog) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::fprintf(stderr, "%s: no CUDA device found (cudaGetDeviceCount: %s)\n", prog,
                 err != cudaSuccess ? cudaGetErrorName(err) : "0 devices");
    std::exit(kExitNoDevice);
  }
  return count;
}

inline std::string version_string(int v) {  // CUDA style 13000 -> "13.0"
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d.%d", v / 1000, (v % 1000) / 10);
  return buf;
}

// NVIDIA driver release ("580.159.04") from /proc; the driver's CUDA API level otherwise.
inline std::string driver_version() {
  std::ifstream f("/proc/driver/nvidia/version");
  std::string word;
  while (f >> word) {
    int dots = 0;
    bool ok = !word.empty() && std::isdigit(static_cast<unsigned char>(word[0]));
    for (char c : word) {
      if (c == '.') ++dots;
      else if (!std::isdigit(static_cast<unsigned char>(c))) ok = false;
    }
    if (ok && dots >= 1) return word;
  }
  int v = 0;
  if (cudaDriverGetVersion(&v) == cudaSuccess && v > 0) return "cuda-api-" + version_string(v);
  return "";
}

inline std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

inline std::string utc_timestamp() {  // ISO-8601 UTC, as the Python harness writes it
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Minimal JSON writer: values are pre-rendered strings; objects keep insertion order.
inline std::string jstr(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}
inline std::string jnum(double v) {
  if (!std::isfinite(v)) return "null";  // JSON has no inf/nan
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}
inline std::string jint(long long v) { return std::to_string(v); }
inline std::string jbool(bool v) { return v ? "true" : "false"; }
inline const char* jnull() { return "null"; }

struct JObj {
  std::vector<std::pair<std::string, std::string>> kv;
  JObj& add(const std::string& k, const std::string& rendered) {
    kv.emplace_back(k, rendered);
    return *this;
  }
  std::string str(int indent = 0) const {
    std::string pad(indent + 2, ' '), end(indent, ' ');
    std::string out = "{";
    for (size_t i = 0; i < kv.size(); ++i) {
      out += (i ? ",\n" : "\n") + pad + jstr(kv[i].first) + ": " + kv[i].second;
    }
    return out + (kv.empty() ? "}" : "\n" + end + "}");
  }
  std::string compact() const {
    std::string out = "{";
    for (size_t i = 0; i < kv.size(); ++i) out += (i ? ", " : "") + jstr(kv[i].first) + ": " + kv[i].second;
    return out + "}";
  }
};

template <class T, class F>
std::string jlist(const std::vector<T>& v, F render) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + render(v[i]);
  return out + "]";
}
inline std::string jlist_int(const std::vector<long long>& v) {
  return jlist(v, [](long long x) { return jint(x); });
}
inline std::string jlist_str(const std::vector<std::string>& v) {
  return jlist(v, [](const std::string& x) { return jstr(x); });
}

// The device record of the moesim-bench/v1 schema (moesim/microbench/results.py DEVICE_FIELDS,
// plus cublas and sm_count). cublas is "" when the benchmark does not use cuBLAS (-> null).
inline JObj device_record(int dev, int gpus, const std::string& cublas) {
  cudaDeviceProp p{};
  MB_CUDA(cudaGetDeviceProperties(&p, dev));
  int rt = 0;
  MB_CUDA(cudaRuntimeGetVersion(&rt));
  std::string drv = driver_version();
  char cc[16];
  std::snprintf(cc, sizeof cc, "%d.%d", p.major, p.minor);
  JObj d;
  d.add("name", jstr(p.name))
      .add("compute_capability", jstr(cc))
      .add("driver", drv.empty() ? jnull() : jstr(drv))
      .add("cuda_runtime", jstr(version_string(rt)))
      .add("cublas", cublas.empty() ? jnull() : jstr(cublas))
      .add("sm_count", jint(p.multiProcessorCount))
      .add("backend", jstr("cuda"))
      .add("torch", jnull())
      .add("nccl", jnull())
      .add("gpus", jint(gpus))
      .add("device_index", jint(dev));
  return d;
}

// Writes the whole results file through a temporary name and a rename (all or nothing).
inline void write_results(const std::string& path, const std::string& benchmark, const JObj& device,
                          const JObj& parameters, const std::vector<JObj>& rows, const JObj& check) {
  std::string out = "{\n";
  out += "  \"schema\": \"moesim-bench/v1\",\n";
  out += "  \"benchmark\": " + jstr(benchmark) + ",\n";
  out += "  \"device\": " + device.str(2) + ",\n";
  out += "  \"timestamp\": " + jstr(utc_timestamp()) + ",\n";
  out += "  \"host\": " + jstr(hostname()) + ",\n";
  out += "  \"parameters\": " + parameters.str(2) + ",\n";
  out += "  \"rows\": [";
  for (size_t i = 0; i < rows.size(); ++i) out += (i ? ",\n    " : "\n    ") + rows[i].compact();
  out += rows.empty() ? "],\n" : "\n  ],\n";
  out += "  \"check\": " + check.str(2) + "\n}\n";
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) die(kExitRuntime, "error: cannot write %s: %s", tmp.c_str(), std::strerror(errno));
  bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0)
    die(kExitRuntime, "error: cannot write %s: %s", path.c_str(), std::strerror(errno));
}

// ---------------------------------------------------------------------------------------------
// Command-line helpers.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

// Integer with optional binary suffix K, M, G (KiB, MiB, GiB). Exits kExitUsage when malformed.
inline long long parse_size(const char* prog, const std::string& opt, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  long long mult = 1;
  if (end && *end) {
    std::string suf(end);
    if (suf == "K" || suf == "k" || suf == "KiB") mult = 1LL << 10;
    else if (suf == "M" || suf == "MiB") mult = 1LL << 20;
    else if (suf == "G" || suf == "GiB") mult = 1LL << 30;
    else mult = 0;
  }
  if (errno || end == text.c_str() || mult == 0 || v < 0)
    die(kExitUsage, "%s: bad value '%s' for %s (want a non-negative integer, optional K/M/G suffix)", prog,
        text.c_str(), opt.c_str());
  return v * mult;
}

inline std::vector<long long> parse_int_list(const char* prog, const std::string& opt, const std::string& text) {
  std::vector<long long> out;
  for (const auto& item : split(text, ',')) out.push_back(parse_size(prog, opt, item));
  if (out.empty()) die(kExitUsage, "%s: %s needs a comma-separated list", prog, opt.c_str());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Timing: median of per-sample seconds.
inline double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline std::string human_bytes(long long b) {
  char buf[32];
  if (b >= (1LL << 30) && b % (1LL << 30) == 0) std::snprintf(buf, sizeof buf, "%lldG", b >> 30);
  else if (b >= (1LL << 20) && b % (1LL << 20) == 0) std::snprintf(buf, sizeof buf, "%lldM", b >> 20);
  else if (b >= (1LL << 10) && b % (1LL << 10) == 0) std::snprintf(buf, sizeof buf, "%lldK", b >> 10);
  else std::snprintf(buf, sizeof buf, "%lld", b);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// A kernel that spins for `ns` nanoseconds of the GPU's global timer. Enqueued before a batch of
// timed iterations, it holds the stream while the host enqueues the whole batch, so a timed
// iteration never includes the GPU waiting for the host (the "blocking kernel" trick of nvbench).
__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// Median seconds of `iters` samples of `body` (each sample: pre(), start event, body(), stop
// event) on `stream`, after `warmup` untimed samples. All samples are queued behind a spin kernel
// and synchronised once at the end. pre() runs outside the timed window (e.g. an L2 flush).
// host_ns_per_iter: how long the host may take to enqueue one sample (sizes the spin kernel).
template <class Pre, class Body>
double median_seconds(cudaStream_t stream, int warmup, int iters, Pre pre, Body body,
                      unsigned long long host_ns_per_iter = 50000ULL) {
  for (int i = 0; i < warmup; ++i) {
    pre();
    body();
  }
  MB_CUDA(cudaStreamSynchronize(stream));
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters));
  for (auto& e : ev) MB_CUDA(cudaEventCreate(&e));
  unsigned long long spin_ns = 200000ULL + host_ns_per_iter * static_cast<unsigned long long>(iters);
  spin_ns = std::min(spin_ns, 200000000ULL);
  spin_kernel<<<1, 1, 0, stream>>>(spin_ns);
  MB_CUDA(cudaGetLastError());
  for (int i = 0; i < iters; ++i) {
    pre();
    MB_CUDA(cudaEventRecord(ev[2 * i], stream));
    body();
    MB_CUDA(cudaEventRecord(ev[2 * i + 1], stream));
  }
  MB_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> s(iters);
  for (int i = 0; i < iters; ++i) {
    float ms = 0.f;
    MB_CUDA(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
    s[i] = ms * 1e-3;
  }
  for (auto& e : ev) MB_CUDA(cudaEventDestroy(e));
  return median(s);
}

}  // namespace mb
