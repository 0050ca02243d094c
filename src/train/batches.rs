//! The training data on its way to the device: the loader for this rank, and a loader batch cut
//! into micro-batches (tokenised, copied without blocking the host).

use super::step::MicroBatch;
use crate::config::Config;
use crate::data::loader::{Batch, Loader, LoaderConfig, Position};
use crate::data::{Dataset, Sample};
use crate::dist::Dist;
use crate::formats::pretrained::Pretrained;
use crate::text::Captioner;
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;

/// The training loader of `cfg` for this rank, from `from`.
pub fn start_loader(
    cfg: &Config,
    dist: &Dist,
    samples: Vec<Sample>,
    captioner: &Arc<Captioner>,
    clip: &Pretrained,
    from: Position,
) -> Result<Loader> {
    let t = &cfg.train;
    let loader_cfg = LoaderConfig {
        batch_size: t.micro_batch_size * t.grad_accum_steps,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: t.seed,
        shuffle: true,
        rank: dist.rank,
        world_size: dist.world_size,
        on_error: cfg.data.on_error,
        drop_last: true,
        augment: cfg.data.augment.clone(),
        epochs: Some(t.epochs),
    };
    Loader::start(
        Arc::new(Dataset { samples }),
        captioner.clone(),
        clip.preprocess.clone(),
        loader_cfg,
        from,
    )
}

/// A loader batch as micro-batches of `micro` rows on `device` (tokenised here, each
/// micro-batch's texts cut after its last end-of-text token: `MicroBatch::new`).
pub fn micro_batches(
    clip: &Pretrained,
    batch: &Batch,
    micro: usize,
    device: tch::Device,
) -> Result<Vec<MicroBatch>> {
    let (h, w) = clip.preprocess.output_size();
    let n = batch.samples.len() as i64;
    let pixels = Tensor::from_slice(&batch.pixels[..]).view([n, 3, h as i64, w as i64]);
    let (ids, mask) = clip.tokenize(&batch.captions)?;
    let (size, eos) = (micro as i64, clip.model.config.text_config.eos_token_id);
    Ok((0..n)
        .step_by(micro)
        .map(|s| {
            let rows = |t: &Tensor| t.narrow(0, s, size.min(n - s));
            MicroBatch::new(&rows(&pixels), &rows(&ids), &rows(&mask), eos, |t| {
                to_device(t, device)
            })
        })
        .collect())
}

/// `t` on `device`; to a GPU through pinned host memory, copied without blocking the host (the
/// copy is ordered before the kernels that read it on the same stream).
fn to_device(t: &Tensor, device: tch::Device) -> Tensor {
    if device.is_cuda() {
        t.pin_memory(device)
            .to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}
