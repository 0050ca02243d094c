//! Where this process is in a data-parallel job, read from the launcher's environment:
//! torchrun's (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`), else SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`, the first host of `SLURM_JOB_NODELIST`), else a single process.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already hosts the store at MASTER_ADDR:MASTER_PORT: connect as a client.
    pub use_agent_store: bool,
    /// torchrun's restart count: keys of each attempt are kept apart in the agent's store.
    pub restart_count: u32,
    /// "torchrun", "streetclip --nproc-per-node", "slurm" or "single".
    pub launcher: &'static str,
}

/// torchrun's and PyTorch's default rendezvous port.
pub const DEFAULT_PORT: u16 = 29500;

impl DistEnv {
    pub fn single() -> Self {
        Self {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
            use_agent_store: false,
            restart_count: 0,
            launcher: "single",
        }
    }

    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// As `from_env`, reading variables through `var` (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str| -> Result<Option<usize>> {
            var(k)
                .map(|v| {
                    v.trim().parse::<usize>().with_context(|| {
                        format!("environment variable {k}=`{v}` is not a whole number")
                    })
                })
                .transpose()
        };
        let port = || -> Result<u16> {
            match var("MASTER_PORT") {
                Some(p) => p
                    .trim()
                    .parse()
                    .with_context(|| format!("MASTER_PORT=`{p}` is not a port number")),
                None => Ok(DEFAULT_PORT),
            }
        };
        let env = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
            Self {
                rank,
                local_rank,
                world_size: world,
                local_world_size: num("LOCAL_WORLD_SIZE")?.unwrap_or(world),
                master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port()?,
                use_agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
                restart_count: num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u32,
                // The built-in launcher sets torchrun's variables and says so.
                launcher: if var("STREETCLIP_LAUNCHER").is_some() {
                    "streetclip --nproc-per-node"
                } else {
                    "torchrun"
                },
            }
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            let nodes = var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST"));
            let master_addr = match var("MASTER_ADDR") {
                Some(a) => a,
                None => first_host(nodes.as_deref().context("SLURM_JOB_NODELIST is not set: cannot tell the first node's host name (or set MASTER_ADDR)")?)?,
            };
            let local_world = num("SLURM_NTASKS_PER_NODE")?
                .or(num("SLURM_GPUS_ON_NODE")?)
                .unwrap_or(world);
            Self {
                rank,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                world_size: world,
                local_world_size: local_world,
                master_addr,
                master_port: port()?,
                use_agent_store: false,
                restart_count: num("SLURM_RESTART_COUNT")?.unwrap_or(0) as u32,
                launcher: "slurm",
            }
        } else {
            Self::single()
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            bail!("rank {} is not within a world of {} processes (check RANK / WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS)", env.rank, env.world_size);
        }
        Ok(env)
    }

    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }
}

/// The first host of a SLURM node list: `gpu[07-09,12],cpu3` → `gpu07`; `node1,node2` → `node1`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if prefix.is_empty() {
        bail!("cannot read a host from SLURM node list `{list}`");
    }
    if list[end..].starts_with('[') {
        let inner = &list[end + 1
            ..list[end..]
                .find(']')
                .map(|i| end + i)
                .with_context(|| format!("unbalanced [ in SLURM node list `{list}`"))?];
        let first = inner.split(',').next().unwrap_or_default();
        let first = first.split('-').next().unwrap_or_default();
        return Ok(format!("{prefix}{first}"));
    }
    Ok(prefix.to_string())
}
