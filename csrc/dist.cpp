// PyTorch's own distributed engine (c10d) through a C ABI: TCPStore rendezvous, the Gloo (CPU)
// and NCCL (GPU) process groups, and the collectives data parallelism needs, with timeouts.
// Every function returns 0 / a handle on success and -1 / NULL on failure, with the exception
// text available from sc_dist_last_error() on the same thread.

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

thread_local std::string last_error;

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

template <typename F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

at::Tensor& tensor(void* t) { return *static_cast<at::Tensor*>(t); }

// Waits for a collective; a peer that died or hung surfaces here as an exception after `timeout`.
void finish(Group* g, c10::intrusive_ptr<c10d::Work> work) { work->wait(g->timeout); }

}  // namespace

extern "C" {

const char* sc_dist_last_error() { return last_error.c_str(); }

int sc_dist_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// A TCPStore: the server (also a client) when is_server, else a client of host:port. `prefix`
// namespaces the keys (torchrun's agent store is shared with the agent).
void* sc_store_new(const char* host, int port, int world_size, int is_server, int64_t timeout_ms, const char* prefix) {
  c10d::Store* out = nullptr;
  guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = world_size;
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    out = store.release();
  });
  return out;
}

void sc_store_free(void* store) {
  if (store) c10::intrusive_ptr<c10d::Store>::reclaim(static_cast<c10d::Store*>(store));
}

int sc_store_set(void* store, const char* key, const char* value) {
  return guarded([&] {
    std::string v(value);
    static_cast<c10d::Store*>(store)->set(key, std::vector<uint8_t>(v.begin(), v.end()));
  });
}

// Copies the value (waiting up to the store's timeout for the key) into buf; returns its length.
int64_t sc_store_get(void* store, const char* key, char* buf, int64_t cap) {
  int64_t len = -1;
  guarded([&] {
    auto v = static_cast<c10d::Store*>(store)->get(key);
    len = static_cast<int64_t>(v.size());
    std::copy(v.begin(), v.begin() + std::min<int64_t>(len, cap), buf);
  });
  return len;
}

// backend: 0 Gloo, 1 NCCL (the caller has made `cuda:device` current for NCCL).
void* sc_pg_new(void* store, int backend, int rank, int size, int64_t timeout_ms) {
  Group* out = nullptr;
  guarded([&] {
    auto s = c10::intrusive_ptr<c10d::Store>::unsafe_reclaim_from_nonowning(static_cast<c10d::Store*>(store));
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      // As torch.distributed: GLOO_SOCKET_IFNAME names the interface, else the hostname's.
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      opts->devices.push_back(ifname && *ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                                : c10d::ProcessGroupGloo::createDefaultDevice());
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, size, opts);
    } else {
#ifdef USE_C10D_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, size, opts);
#else
      throw std::runtime_error("this streetclip was built without NCCL (no CUDA/NCCL headers at build time)");
#endif
    }
    out = new Group{pg, timeout};
  });
  return out;
}

void sc_pg_free(void* pg) { delete static_cast<Group*>(pg); }

int sc_all_reduce_sum(void* pg, void* t) {
  auto g = static_cast<Group*>(pg);
  return guarded([&] {
    std::vector<at::Tensor> ts{tensor(t)};
    finish(g, g->backend->allreduce(ts, c10d::AllreduceOptions{}));
  });
}

// outs[i] receives rank i's `in` (all the same shape).
int sc_all_gather(void* pg, void** outs, int64_t n, void* in) {
  auto g = static_cast<Group*>(pg);
  return guarded([&] {
    std::vector<std::vector<at::Tensor>> out(1);
    for (int64_t i = 0; i < n; ++i) out[0].push_back(tensor(outs[i]));
    std::vector<at::Tensor> input{tensor(in)};
    finish(g, g->backend->allgather(out, input, c10d::AllgatherOptions{}));
  });
}

int sc_broadcast(void* pg, void* t, int root) {
  auto g = static_cast<Group*>(pg);
  return guarded([&] {
    std::vector<at::Tensor> ts{tensor(t)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    finish(g, g->backend->broadcast(ts, opts));
  });
}

int sc_barrier(void* pg) {
  auto g = static_cast<Group*>(pg);
  return guarded([&] { finish(g, g->backend->barrier(c10d::BarrierOptions{})); });
}

}  // extern "C"
