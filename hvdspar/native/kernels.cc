// GSpar's hot loops as TensorFlow CPU kernels (hvdspar/native/__init__.py loads them).
//
//   HvdsparKeep(x, lam, seed)   -> sorted i with u_i < lam |x_i|    the sampling pass (hvdspar/sparsify.py)
//   HvdsparScatterRows(idx, val, d) -> the rows of entries summed into a dense [d]   the decode (hvdspar/wire.py)
//
// u_i is hvdspar/rng.py's counter-based uniform, bit for bit:
//   key = fmix(fmix(seed_0) * 0x9E3779B9 + seed_1),  i = 2^32 hi + lo,
//   u_i = (fmix(fmix(lo ^ key) + hi + key) >> 8) * 2^-24,
// and the test u_i < lam * |x_i| is one float32 multiply and compare, so HvdsparKeep returns exactly the
// indices of the XLA sampling pass. Built with -ffp-contract=off and without fast-math: the compiler
// keeps every float operation as written.
//
// The kernels cut their data into blocks of kBlock elements, work on the blocks in parallel on
// TensorFlow's intra-op threads, and combine the blocks' results in block order: the same input gives
// the same result whatever the number of threads or the vector width the CPU has. Each kernel gives the
// bits of the XLA computation it stands in for (hvdspar/kernels.py), so a model trained never depends
// on whether they were built.

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace hvdspar {
namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

constexpr int64_t kBlock = 1 << 16;  // divides 2^32: a block never straddles two hi words of i
constexpr int kWordsPerTest = 4;

// Several versions of the hot loops, one per instruction set, picked when the library loads.
#if defined(__x86_64__) && !defined(__clang__)
#define HVDSPAR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HVDSPAR_CLONES
#endif

// work(first, last) over the blocks [0, blocks), in shards of kShardBlocks blocks on TensorFlow's
// intra-op threads (the caller's thread takes part). Which thread runs a block changes nothing:
// every block writes only its own results.
constexpr int64_t kShardBlocks = 4;

void ForBlocks(OpKernelContext* ctx, int64_t blocks, const std::function<void(int64_t, int64_t)>& work) {
  using Pool = tensorflow::thread::ThreadPool;
  ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
      blocks, Pool::SchedulingParams(Pool::SchedulingStrategy::kFixedBlockSize, std::nullopt, kShardBlocks), work);
}

inline uint32_t Fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

uint32_t StreamKey(int64_t seed0, int64_t seed1) {
  return Fmix32(Fmix32(static_cast<uint32_t>(seed0)) * 0x9E3779B9u + static_cast<uint32_t>(seed1));
}

// keep[j] = u_{start+j} < lam |x_j| for one block (n <= kBlock); x points at element start.
HVDSPAR_CLONES
void BlockKeep(const float* __restrict x, int64_t n, int64_t start, float lam, uint32_t key,
               uint8_t* __restrict keep) {
  const uint32_t lo0 = static_cast<uint32_t>(start);
  const uint32_t hi_key = static_cast<uint32_t>(static_cast<uint64_t>(start) >> 32) + key;
  const uint32_t m = static_cast<uint32_t>(n);  // a uint32 counter: 32-bit lanes throughout
  for (uint32_t j = 0; j < m; ++j) {
    uint32_t h = Fmix32(Fmix32((lo0 + j) ^ key) + hi_key);
    float u = static_cast<float>(static_cast<int32_t>(h >> 8)) * (1.0f / 16777216.0f);  // exact: h >> 8 < 2^24
    keep[j] = u < lam * std::fabs(x[j]);
  }
}

class KeepOp : public OpKernel {
 public:
  explicit KeepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& lam_t = ctx->input(1);
    const Tensor& seed_t = ctx->input(2);
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsScalar(lam_t.shape()),
                tensorflow::errors::InvalidArgument("HvdsparKeep: lam must be a scalar, got shape ",
                                                    lam_t.shape().DebugString()));
    OP_REQUIRES(ctx, seed_t.NumElements() == 2,
                tensorflow::errors::InvalidArgument("HvdsparKeep: seed must have 2 elements, got shape ",
                                                    seed_t.shape().DebugString()));
    const float* x = input.flat<float>().data();
    const float lam = lam_t.scalar<float>()();
    const uint32_t key = StreamKey(seed_t.flat<int64_t>()(0), seed_t.flat<int64_t>()(1));
    const int64_t d = input.NumElements();
    const int64_t blocks = (d + kBlock - 1) / kBlock;
    std::vector<std::vector<int64_t>> kept(blocks);
    auto work = [&](int64_t first, int64_t last) {
      std::vector<uint64_t> words(kBlock / 8 + kWordsPerTest, 0);  // the flags, eight to a word
      uint8_t* keep = reinterpret_cast<uint8_t*>(words.data());
      std::unique_ptr<int64_t[]> found(new int64_t[kBlock]);  // a block's kept indices (uninitialised)
      for (int64_t b = first; b < last; ++b) {
        const int64_t start = b * kBlock;
        const int64_t n = std::min(kBlock, d - start);
        BlockKeep(x + start, n, start, lam, key, keep);
        std::memset(keep + n, 0, 8 * kWordsPerTest);
        int64_t count = 0;
        // most flags are 0: test kWordsPerTest words (32 flags) at once, then the words, then the bytes
        for (int64_t w = 0; w < (n + 7) / 8; w += kWordsPerTest) {
          uint64_t any = 0;
          for (int q = 0; q < kWordsPerTest; ++q) any |= words[w + q];
          if (!any) continue;
          for (int q = 0; q < kWordsPerTest; ++q) {
            for (uint64_t word = words[w + q]; word; word &= word - 1) {
              // a flag is the byte 0 or 1: its set bit is the lowest bit of its byte
              found[count++] = start + 8 * (w + q) + __builtin_ctzll(word) / 8;
            }
          }
        }
        kept[b].assign(found.get(), found.get() + count);
      }
    };
    ForBlocks(ctx, blocks, work);
    int64_t total = 0;
    for (const auto& k : kept) total += static_cast<int64_t>(k.size());
    Tensor* indices;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({total}), &indices));
    int64_t* dst = indices->flat<int64_t>().data();
    for (const auto& k : kept) {
      if (!k.empty()) std::memcpy(dst, k.data(), k.size() * sizeof(int64_t));
      dst += k.size();
    }
  }
};

// out = sum over the rows r of the [M, P] table (idx, val), row after row: out[idx[r, j]] += val[r, j],
// starting from zeros. Indices are unique within a row, so for each output element the adds come in
// row order, as in hvdspar/wire.py's XLA computation: the same bits. The output is cut into blocks
// of kBlock elements; each thread zeroes its blocks and adds the entries that fall in them (while the
// block is in cache), found through a stable counting sort of the entries by block.
template <typename T>
class ScatterRowsOp : public OpKernel {
 public:
  explicit ScatterRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) { OP_REQUIRES_OK(ctx, ctx->GetAttr("d", &d_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& idx_t = ctx->input(0);
    const Tensor& val_t = ctx->input(1);
    OP_REQUIRES(ctx, idx_t.dims() == 2 && idx_t.shape() == val_t.shape(),
                tensorflow::errors::InvalidArgument("HvdsparScatterRows: idx and val must be [M, P] alike, got ",
                                                    idx_t.shape().DebugString(), " and ", val_t.shape().DebugString()));
    const int64_t* idx = idx_t.flat<int64_t>().data();
    const T* val = val_t.flat<T>().data();
    const int64_t n = idx_t.NumElements();
    const int64_t d = d_;
    const int64_t blocks = (d + kBlock - 1) / kBlock;
    // entries by block, in their order in the table (row order): a stable counting sort
    std::vector<int64_t> start(blocks + 1, 0);
    for (int64_t k = 0; k < n; ++k) {
      OP_REQUIRES(ctx, idx[k] >= 0 && idx[k] < d,
                  tensorflow::errors::InvalidArgument("HvdsparScatterRows: index ", idx[k], " of entry ", k,
                                                      " is outside [0, ", d, ")"));
      ++start[idx[k] / kBlock + 1];
    }
    for (int64_t b = 0; b < blocks; ++b) start[b + 1] += start[b];
    std::vector<int64_t> order(n);
    {
      std::vector<int64_t> next(start.begin(), start.end() - 1);
      for (int64_t k = 0; k < n; ++k) order[next[idx[k] / kBlock]++] = k;
    }
    Tensor* out_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d}), &out_t));
    T* out = out_t->flat<T>().data();
    auto work = [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t lo = b * kBlock;
        std::fill(out + lo, out + std::min(d, lo + kBlock), T(0));
        for (int64_t e = start[b]; e < start[b + 1]; ++e) out[idx[order[e]]] += val[order[e]];
      }
    };
    ForBlocks(ctx, blocks, work);
  }

 private:
  int64_t d_;
};

REGISTER_OP("HvdsparKeep")
    .Input("x: float")
    .Input("lam: float")
    .Input("seed: int64")
    .Output("indices: int64")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      return tensorflow::OkStatus();
    })
    .Doc("The sorted flat indices i of x with u_i < lam |x_i|, u_i = hvdspar.rng.uniform_at(i, seed).");

REGISTER_OP("HvdsparScatterRows")
    .Input("idx: int64")
    .Input("val: T")
    .Output("sum: T")
    .Attr("T: {float, double}")
    .Attr("d: int >= 0")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int64_t d;
      TF_RETURN_IF_ERROR(c->GetAttr("d", &d));
      c->set_output(0, c->Vector(d));
      return tensorflow::OkStatus();
    })
    .Doc("sum_r of the rows of the [M, P] entries (idx, val) into a dense [d], row after row (hvdspar.wire).");

REGISTER_KERNEL_BUILDER(Name("HvdsparScatterRows").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        ScatterRowsOp<float>);
REGISTER_KERNEL_BUILDER(Name("HvdsparScatterRows").Device(DEVICE_CPU).TypeConstraint<double>("T"),
                        ScatterRowsOp<double>);
REGISTER_KERNEL_BUILDER(Name("HvdsparKeep").Device(DEVICE_CPU), KeepOp);

}  // namespace
}  // namespace hvdspar
