//! The `dist` section: how the processes of a data-parallel run talk.

use crate::dist::Backend;
use std::time::Duration;

/// `dist.backend`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// NCCL on CUDA devices, Gloo on the CPU.
    #[default]
    Auto,
    /// Gloo, the CPU backend.
    Gloo,
    /// NCCL (CUDA devices only).
    Nccl,
}

/// How the processes of a data-parallel run talk.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    pub backend: BackendChoice,
    /// How long a collective or the rendezvous waits for the other processes before failing.
    pub timeout_s: u64,
    /// A peer that sends no heartbeat for this long (stopped or hung) stops the job with its
    /// rank named (0: off).
    pub heartbeat_timeout_s: u64,
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            timeout_s: 1800,
            heartbeat_timeout_s: 60,
        }
    }
}

impl DistConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.timeout_s == 0 {
            anyhow::bail!("dist.timeout_s = 0: it must be at least 1");
        }
        super::at_most("dist.timeout_s", self.timeout_s, super::MAX_SECONDS)?;
        super::at_most(
            "dist.heartbeat_timeout_s",
            self.heartbeat_timeout_s,
            super::MAX_SECONDS,
        )
    }

    pub fn backend_for(&self, device: tch::Device) -> Backend {
        match self.backend {
            BackendChoice::Auto if device.is_cuda() => Backend::Nccl,
            BackendChoice::Auto | BackendChoice::Gloo => Backend::Gloo,
            BackendChoice::Nccl => Backend::Nccl,
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_s)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.max(1))
    }
}
