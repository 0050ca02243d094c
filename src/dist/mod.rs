//! Data parallelism on PyTorch's c10d (csrc/dist.cpp): a TCPStore rendezvous and a Gloo (CPU)
//! or NCCL (GPU) process group, with the collectives training needs. A world of one process
//! needs none of it: every collective is then a no-op.

pub mod env;
mod heartbeat;
pub mod launch;

pub use env::DistEnv;

use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;
use tch::Tensor;

extern "C" {
    fn sc_dist_last_error() -> *const c_char;
    fn sc_dist_has_nccl() -> i32;
    fn sc_store_new(
        host: *const c_char,
        port: i32,
        world_size: i32,
        is_server: i32,
        timeout_ms: i64,
        prefix: *const c_char,
    ) -> *mut c_void;
    fn sc_store_free(store: *mut c_void);
    fn sc_store_set(store: *mut c_void, key: *const c_char, value: *const c_char) -> i32;
    fn sc_store_get(store: *mut c_void, key: *const c_char, buf: *mut c_char, cap: i64) -> i64;
    fn sc_pg_new(
        store: *mut c_void,
        backend: i32,
        rank: i32,
        size: i32,
        timeout_ms: i64,
    ) -> *mut c_void;
    fn sc_pg_free(pg: *mut c_void);
    fn sc_all_reduce_sum(pg: *mut c_void, t: *mut c_void) -> i32;
    fn sc_all_gather(pg: *mut c_void, outs: *mut *mut c_void, n: i64, input: *mut c_void) -> i32;
    fn sc_broadcast(pg: *mut c_void, t: *mut c_void, root: i32) -> i32;
    fn sc_barrier(pg: *mut c_void) -> i32;
}

fn last_error() -> String {
    // SAFETY: the shim returns a pointer to its thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sc_dist_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// One line of the C++ exception, without libtorch's multi-line stack dump.
fn c10d_error(what: &str) -> anyhow::Error {
    let text = last_error();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown error")
        .trim()
        .to_string();
    anyhow::anyhow!("{what}: {first}")
}

/// Whether this build has ProcessGroupNCCL (CUDA and NCCL headers were present at build time).
pub fn has_nccl() -> bool {
    // SAFETY: no arguments.
    unsafe { sc_dist_has_nccl() != 0 }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

/// A c10d TCPStore (through a key prefix).
pub struct Store {
    ptr: *mut c_void,
}

impl Store {
    /// The server (rank 0 without an agent store) binds `host:port`; clients connect, retrying
    /// until `timeout`.
    pub fn connect(
        host: &str,
        port: u16,
        world_size: usize,
        is_server: bool,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Self> {
        let (h, p) = (CString::new(host)?, CString::new(prefix)?);
        // SAFETY: NUL-terminated strings that outlive the call.
        let ptr = unsafe {
            sc_store_new(
                h.as_ptr(),
                port.into(),
                world_size as i32,
                i32::from(is_server),
                timeout.as_millis() as i64,
                p.as_ptr(),
            )
        };
        if ptr.is_null() {
            let role = if is_server {
                format!("cannot host the rendezvous store on {host}:{port} (is the port in use? set MASTER_PORT to a free one)")
            } else {
                format!("cannot reach the rendezvous store at {host}:{port} within {}s (is MASTER_ADDR right and rank 0 running?)", timeout.as_secs())
            };
            return Err(c10d_error(&role));
        }
        Ok(Self { ptr })
    }

    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (CString::new(key)?, CString::new(value)?);
        // SAFETY: live store, NUL-terminated strings.
        if unsafe { sc_store_set(self.ptr, k.as_ptr(), v.as_ptr()) } != 0 {
            return Err(c10d_error(&format!("store set `{key}`")));
        }
        Ok(())
    }

    /// Waits (up to the store's timeout) for `key`.
    pub fn get(&self, key: &str) -> Result<String> {
        let k = CString::new(key)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: live store; the shim writes at most `cap` bytes into buf.
        let n = unsafe {
            sc_store_get(
                self.ptr,
                k.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len() as i64,
            )
        };
        if n < 0 {
            return Err(c10d_error(&format!("store get `{key}`")));
        }
        buf.truncate((n as usize).min(buf.len()));
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by sc_store_new, freed once.
        unsafe { sc_store_free(self.ptr) }
    }
}

struct ProcessGroup {
    ptr: *mut c_void,
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by sc_pg_new, freed once.
        unsafe { sc_pg_free(self.ptr) }
    }
}

/// This process's place in the job and, when there are several processes, its process group.
pub struct Dist {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Where the group's tensors live (NCCL: this rank's GPU).
    device: tch::Device,
    group: Option<(ProcessGroup, Store)>,
    heartbeat: std::sync::Mutex<Option<heartbeat::Running>>,
}

impl Dist {
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            device: tch::Device::Cpu,
            group: None,
            heartbeat: Default::default(),
        }
    }

    /// Joins the job `env` describes (a no-op world of one when it is not distributed); the
    /// tensors passed to collectives live on `device`.
    pub fn init(
        env: &DistEnv,
        backend: Backend,
        device: tch::Device,
        timeout: Duration,
    ) -> Result<Self> {
        if !env.is_distributed() {
            return Ok(Self::single());
        }
        if backend == Backend::Nccl && !device.is_cuda() {
            bail!("the NCCL backend needs a CUDA device (model.device: cuda); on CPU use dist.backend: gloo");
        }
        if backend == Backend::Nccl && !has_nccl() {
            bail!("NCCL was requested but this streetclip was built without it; rebuild where the torch wheel's CUDA and NCCL headers are installed (make setup), or use dist.backend: gloo");
        }
        let is_server = env.rank == 0 && !env.use_agent_store;
        let prefix = store_prefix(env);
        let store = Store::connect(
            &env.master_addr,
            env.master_port,
            env.world_size,
            is_server,
            timeout,
            &prefix,
        )?;
        let code = match backend {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        };
        // SAFETY: a live store; the process group keeps its own reference to it.
        let ptr = unsafe {
            sc_pg_new(
                store.ptr,
                code,
                env.rank as i32,
                env.world_size as i32,
                timeout.as_millis() as i64,
            )
        };
        if ptr.is_null() {
            return Err(c10d_error(&format!(
                "cannot create the {backend:?} process group (rank {} of {})",
                env.rank, env.world_size
            )));
        }
        Ok(Self {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            device,
            group: Some((ProcessGroup { ptr }, store)),
            heartbeat: Default::default(),
        })
    }

    /// Rank 0: the one that logs, checkpoints and exports.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn pg(&self) -> Option<*mut c_void> {
        self.group.as_ref().map(|(pg, _)| pg.ptr)
    }

    fn check(code: i32, what: &str) -> Result<()> {
        if code != 0 {
            return Err(c10d_error(&format!(
                "{what} failed (a peer process died or timed out?)"
            )));
        }
        Ok(())
    }

    /// Sums `t` (contiguous) over all ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        let Some(pg) = self.pg() else { return Ok(()) };
        // SAFETY: a live group; `t` outlives the blocking call.
        Self::check(
            unsafe { sc_all_reduce_sum(pg, t.as_ptr() as *mut c_void) },
            "all_reduce",
        )
    }

    /// Every rank's `t` (same shape on all), concatenated along dim 0 in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let Some(pg) = self.pg() else {
            return Ok(t.shallow_clone());
        };
        let input = t.contiguous();
        let outs: Vec<Tensor> = (0..self.world_size).map(|_| input.empty_like()).collect();
        let mut ptrs: Vec<*mut c_void> = outs.iter().map(|o| o.as_ptr() as *mut c_void).collect();
        // SAFETY: a live group; the tensors outlive the blocking call.
        Self::check(
            unsafe {
                sc_all_gather(
                    pg,
                    ptrs.as_mut_ptr(),
                    ptrs.len() as i64,
                    input.as_ptr() as *mut c_void,
                )
            },
            "all_gather",
        )?;
        Ok(Tensor::cat(&outs, 0))
    }

    /// Overwrites `t` on every rank with rank `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        let Some(pg) = self.pg() else { return Ok(()) };
        // SAFETY: a live group; `t` outlives the blocking call.
        Self::check(
            unsafe { sc_broadcast(pg, t.as_ptr() as *mut c_void, root as i32) },
            "broadcast",
        )
    }

    pub fn barrier(&self) -> Result<()> {
        let Some(pg) = self.pg() else { return Ok(()) };
        // SAFETY: a live group.
        Self::check(unsafe { sc_barrier(pg) }, "barrier")
    }

    /// Whether `flag` is true on any rank.
    pub fn any(&self, flag: bool) -> Result<bool> {
        if self.group.is_none() {
            return Ok(flag);
        }
        let t = Tensor::from_slice(&[i64::from(flag)]).to(self.device);
        self.all_reduce_sum(&t)?;
        Ok(t.int64_value(&[0]) > 0)
    }

    /// `t`'s mean over the ranks, elementwise, on the device (one collective, no host read).
    pub fn mean_over_ranks(&self, t: &Tensor) -> Result<Tensor> {
        if self.group.is_none() {
            return Ok(t.shallow_clone());
        }
        let sum = t.copy();
        self.all_reduce_sum(&sum)?;
        Ok(sum / self.world_size as f64)
    }

    /// Rank 0's values of `tensors` everywhere, through flat buckets (one collective per bucket).
    pub fn broadcast_tensors(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed(tensors, |flat| self.broadcast(flat, 0))
    }

    /// Sums `tensors` over the ranks in place, through flat buckets.
    pub fn all_reduce_tensors(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed(tensors, |flat| self.all_reduce_sum(flat))
    }

    /// Copies groups of same-dtype, same-device tensors into flat buffers of about
    /// BUCKET_BYTES, runs `op` on each, and copies the results back.
    fn bucketed(&self, tensors: &[Tensor], op: impl Fn(&Tensor) -> Result<()>) -> Result<()> {
        const BUCKET_BYTES: usize = 25 << 20;
        if self.group.is_none() {
            return Ok(());
        }
        let mut start = 0;
        while start < tensors.len() {
            let (kind, device) = (tensors[start].kind(), tensors[start].device());
            let mut end = start;
            let mut bytes = 0;
            while end < tensors.len()
                && tensors[end].kind() == kind
                && tensors[end].device() == device
                && (end == start || bytes + tensor_bytes(&tensors[end]) <= BUCKET_BYTES)
            {
                bytes += tensor_bytes(&tensors[end]);
                end += 1;
            }
            let group = &tensors[start..end];
            let flat = Tensor::cat(
                &group.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(),
                0,
            );
            op(&flat).with_context(|| format!("bucket of {} tensors", group.len()))?;
            let mut offset = 0;
            tch::no_grad(|| {
                for t in group {
                    let n = t.numel() as i64;
                    t.shallow_clone()
                        .copy_(&flat.narrow(0, offset, n).view_as(t));
                    offset += n;
                }
            });
            start = end;
        }
        Ok(())
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Sums gradients over the ranks, scaled so the result is the gradient of the global objective:
/// `1 / world` for the mean of per-rank losses (`per_micro_batch`); 1 for gradients of one
/// global loss that each rank back-propagated only through its own samples (`full_batch`),
/// except for `replicated` parameters (logit_scale), whose gradient every rank computed whole.
pub fn all_reduce_gradients(
    dist: &Dist,
    params: &[(String, Tensor)],
    mean_of_ranks: bool,
    replicated: &[&str],
) -> Result<()> {
    if dist.world_size == 1 {
        return Ok(());
    }
    let w = dist.world_size as f64;
    let mut grads = Vec::new();
    for (name, p) in params.iter().filter(|(_, p)| p.requires_grad()) {
        let g = p.grad();
        if !g.defined() {
            bail!("parameter {name} has no gradient on rank {}", dist.rank);
        }
        if mean_of_ranks || replicated.contains(&name.as_str()) {
            tch::no_grad(|| {
                let _ = g.shallow_clone().g_div_scalar_(w);
            });
        }
        grads.push(g);
    }
    dist.all_reduce_tensors(&grads)
}

/// This job's keys in the rendezvous store (torchrun's restarts get fresh ones).
fn store_prefix(env: &DistEnv) -> String {
    format!("/worker/attempt_{}/streetclip/", env.restart_count)
}

impl Dist {
    /// Starts silent-peer detection for this rank of a multi-process job (`heartbeat.rs`),
    /// until `final_barrier`.
    pub fn start_heartbeat(&self, env: &DistEnv, timeout: Duration) {
        if !env.is_distributed() || timeout.is_zero() {
            return;
        }
        let running = heartbeat::Heartbeat {
            host: env.master_addr.clone(),
            port: env.master_port,
            prefix: store_prefix(env),
            rank: env.rank,
            world_size: env.world_size,
            timeout,
        }
        .start();
        let previous = std::mem::replace(&mut *self.heartbeat.lock().unwrap(), running);
        if let Some(previous) = previous {
            previous.stop();
        }
    }

    /// The job's last barrier: this rank's heartbeat stops first, so once every rank has passed
    /// it nobody talks to the store any more and rank 0 may exit.
    pub fn final_barrier(&self) -> Result<()> {
        if let Some(running) = self.heartbeat.lock().unwrap().take() {
            running.stop();
        }
        self.barrier()
    }
}
