//! `streetclip serve`: the model loaded once behind a batched JSON API and a map page
//! (`crate::serve`), until SIGINT/SIGTERM.

use super::args::{at_least_one, ConfigArgs, MODEL_HELP};
use crate::serve::api::{router, AppState};
use crate::serve::engine::{Batching, Engine};
use crate::serve::page::Page;
use crate::serve::{listener, Limits};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Serve a model: a JSON API (/v1/geolocate, /v1/predict, /v1/embed, /v1/model) that
/// batches concurrent requests into one forward pass, and a map page at / for photos.
#[derive(clap::Args)]
#[command(
    after_help = "Example (after `make demo`):\n  streetclip serve --model runs/demo/export\n  curl --data-binary @assets/demo/coffee.jpg http://127.0.0.1:8080/v1/geolocate"
)]
pub struct Args {
    #[arg(long, help = MODEL_HELP)]
    pub model: PathBuf,
    /// Address to listen on; the default answers this machine only (0.0.0.0:8080 for all).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Most images in one forward pass.
    #[arg(long, default_value_t = 32, value_parser = super::args::batch_size)]
    pub max_batch: usize,
    /// How long the first image of a batch waits for others to join it (milliseconds).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub max_wait_ms: u64,
    /// Images that may wait for the model; beyond, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = bounded::<1, 1_000_000>)]
    pub queue: usize,
    /// Largest request body accepted (MiB); larger ones get 413 before they are read.
    #[arg(long, default_value_t = 32, value_parser = bounded::<1, 4096>)]
    pub max_body_mb: usize,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 512, value_parser = bounded::<1, 100_000>)]
    pub max_connections: usize,
    /// Seconds a client may take to send its request's headers or stay idle between requests.
    #[arg(long, default_value_t = 30, value_parser = at_least_one::<u64>)]
    pub timeout_s: u64,
    /// A tile layer for the map page, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png
    /// (the page works offline without one: country outlines come from the server).
    #[arg(long, value_name = "URL")]
    pub tiles: Option<String>,
    /// Its `geo` section (prompts, candidates, top-k, refinement) sets how /v1/geolocate
    /// answers, as for `geolocate`.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// A number in MIN..=MAX.
fn bounded<const MIN: usize, const MAX: usize>(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    match (MIN..=MAX).contains(&n) {
        true => Ok(n),
        false => Err(format!("must be in {MIN}..={MAX}")),
    }
}

pub fn exec(args: Args) -> Result<()> {
    if let Some(url) = &args.tiles {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            bail!("--tiles {url}: give an http(s) URL template with {{z}}, {{x}} and {{y}}");
        }
    }
    let cfg = args.config.resolve()?;
    let device = crate::model::parse_device(&args.device)?;
    let clip = crate::formats::pretrained::Pretrained::load(&args.model, device)?;
    let batching = Batching {
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue,
    };
    let engine = Engine::start(clip, args.model.clone(), cfg, batching)?;
    let limits = Limits {
        max_body_bytes: args.max_body_mb << 20,
        max_connections: args.max_connections,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let page = Arc::new(Page::new(args.tiles.as_deref()));
    let app = router(AppState::new(engine, limits.clone()), page);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let socket = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {} (in use? try --addr 127.0.0.1:8081)", args.addr))?;
        let addr = socket.local_addr()?;
        eprintln!("streetclip serve: {} on http://{addr}/ (API: http://{addr}/v1/openapi.json); Ctrl-C stops", args.model.display());
        listener::serve(socket, app, &limits, stop_signal()).await?;
        eprintln!("streetclip serve: stopped (requests in flight were answered)");
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
