//! The retrieval index of a geocell export: the training images' embeddings, coordinates and
//! cells, validated on read, searched in bounded chunks on the model's device (PIGEON's
//! retrieval refinement reads it through `GeocellLocator`).

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::formats::pretrained::CELLS_FILE;
use crate::geo::distance::valid_coordinates;

/// Index rows compared with a batch of images at once: bounds the similarity matrix
/// (B × 65,536 floats) whatever the index's size.
const INDEX_CHUNK: i64 = 65_536;

/// Training images as the refinement searches them.
pub struct RetrievalIndex {
    /// L2-normalised image embeddings `[N, d]`: float32 on the CPU, float16 on a GPU (as stored).
    pub embeddings: Tensor,
    /// Each row's cell `[N]`, int64, beside the embeddings (the search masks by it).
    cells: Tensor,
    /// Each row's (latitude, longitude) in degrees and cell, on the host.
    pub coords: Vec<(f64, f64)>,
    pub cell_of: Vec<usize>,
}

impl RetrievalIndex {
    /// Rows of `embeddings` `[N, d]` at `coords` in cells `cell_of`, kept on `device` in the
    /// precision its matrix products run in there.
    pub fn new(
        embeddings: &Tensor,
        coords: Vec<(f64, f64)>,
        cell_of: Vec<usize>,
        device: Device,
    ) -> Self {
        let kind = if device.is_cuda() {
            Kind::Half
        } else {
            Kind::Float
        };
        let ids: Vec<i64> = cell_of.iter().map(|&c| c as i64).collect();
        Self {
            embeddings: embeddings.to_device(device).to_kind(kind),
            cells: Tensor::from_slice(&ids).to_device(device),
            coords,
            cell_of,
        }
    }

    /// Writes the index with float16 embeddings (half the size; similarities change by ~1e-3).
    pub fn write(&self, path: &Path) -> Result<()> {
        let flat: Vec<f64> = self.coords.iter().flat_map(|&(a, b)| [a, b]).collect();
        crate::formats::tensor_io::write(
            path,
            &[
                ("embeddings".into(), self.embeddings.to_kind(Kind::Half)),
                (
                    "coords".into(),
                    Tensor::from_slice(&flat).view([self.len(), 2]),
                ),
                ("cells".into(), self.cells.to(Device::Cpu)),
            ],
        )
    }

    /// The index in `path`, checked against `cells` cells of `dim`-d embeddings.
    pub fn read(path: &Path, cells: usize, dim: i64, device: Device) -> Result<Self> {
        let map: std::collections::HashMap<String, Tensor> =
            crate::formats::tensor_io::read(path)?.into_iter().collect();
        let get = |name: &str| {
            map.get(name).with_context(|| {
                format!(
                    "{} has no `{name}` tensor: rewrite it with `streetclip finetune`",
                    path.display()
                )
            })
        };
        let (e, c, k) = (get("embeddings")?, get("coords")?, get("cells")?);
        let n = e.size()[0];
        if e.size() != [n, dim] || c.size() != [n, 2] || k.size() != [n] || n == 0 {
            bail!("{}: embeddings {:?}, coords {:?} and cells {:?} do not describe one non-empty index of {dim}-d embeddings", path.display(), e.size(), c.size(), k.size());
        }
        if !matches!(k.kind(), Kind::Int64 | Kind::Int | Kind::Uint8) {
            bail!(
                "{}: `cells` is {:?}, not integers",
                path.display(),
                k.kind()
            );
        }
        let damaged = |what: &str, row: i64, why: String| {
            anyhow::anyhow!("{}: row {row} of `{what}`: {why}; the index is damaged: rebuild it with `streetclip finetune` (method geocells)", path.display())
        };
        if let Some(row) = crate::formats::tensor_io::first_non_finite_row(e) {
            return Err(damaged("embeddings", row, "a value is not finite".into()));
        }
        let ids = Vec::<i64>::try_from(k.to_kind(Kind::Int64))?;
        if let Some(row) = ids.iter().position(|&c| c < 0 || c >= cells as i64) {
            return Err(damaged(
                "cells",
                row as i64,
                format!(
                    "cell id {} is not one of the {cells} cells of {CELLS_FILE}",
                    ids[row]
                ),
            ));
        }
        let flat = Vec::<f64>::try_from(c.to_kind(Kind::Double).flatten(0, 1))?;
        let coords: Vec<(f64, f64)> = flat.chunks(2).map(|p| (p[0], p[1])).collect();
        if let Some(row) = coords
            .iter()
            .position(|&(lat, lon)| !valid_coordinates(lat, lon))
        {
            let (lat, lon) = coords[row];
            return Err(damaged(
                "coords",
                row as i64,
                format!(
                    "({lat}, {lon}) is not a latitude in [-90, 90] and a longitude in [-180, 180]"
                ),
            ));
        }
        let cell_of = ids.into_iter().map(|c| c as usize).collect();
        Ok(Self::new(e, coords, cell_of, device))
    }

    pub fn len(&self) -> i64 {
        self.embeddings.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For each image `[B, d]`, the `n` rows most similar to it among those whose cell
    /// `allowed` `[B, K]` admits: `(similarities, rows)`, each `[B, n]` on the CPU, best first;
    /// a similarity is −inf where fewer than `n` rows are admitted.
    pub fn nearest(&self, images: &Tensor, allowed: &Tensor, n: i64) -> (Tensor, Tensor) {
        let device = self.embeddings.device();
        let images = images.to_device(device).to_kind(self.embeddings.kind());
        let allowed = allowed.to_device(device);
        let b = images.size()[0];
        let mut best = Tensor::full([b, 0], f64::NEG_INFINITY, (Kind::Float, device));
        let mut rows = Tensor::zeros([b, 0], (Kind::Int64, device));
        let mut start = 0;
        while start < self.len() {
            let len = INDEX_CHUNK.min(self.len() - start);
            let sims = images
                .matmul(&self.embeddings.narrow(0, start, len).tr())
                .to_kind(Kind::Float);
            let admitted = allowed.index_select(1, &self.cells.narrow(0, start, len));
            let sims = sims.masked_fill(&admitted.logical_not(), f64::NEG_INFINITY);
            let (v, i) = sims.topk(n.min(len), 1, true, true);
            let (all_v, all_i) = (
                Tensor::cat(&[best, v], 1),
                Tensor::cat(&[rows, i + start], 1),
            );
            let (v, pick) = all_v.topk(n.min(all_v.size()[1]), 1, true, true);
            best = v;
            rows = all_i.gather(1, &pick, false);
            start += len;
        }
        (best.to(Device::Cpu), rows.to(Device::Cpu))
    }
}
