//! Validation on the held-out split: in-batch image→text retrieval accuracy, and zero-shot
//! country accuracy among the countries of the data ("A Street View photo in {country}.").

use super::logger::MetricSink;
use crate::data::preprocess::decode;
use crate::data::Sample;
use crate::geo::Gazetteer;
use crate::pretrained::Pretrained;
use crate::text::Captioner;
use anyhow::Result;
use serde::Serialize;
use tch::{Kind, Tensor};

pub const COUNTRY_PROMPT: &str = "A Street View photo in {}.";

#[derive(Debug, Clone, Serialize)]
pub struct ValMetrics {
    pub samples: usize,
    /// In-batch image→text accuracy, batches of the micro-batch size.
    pub batch_accuracy: f64,
    pub country_accuracy: f64,
    /// 1 / number of candidate countries.
    pub country_chance: f64,
    pub countries: usize,
}

impl ValMetrics {
    pub fn line(&self) -> String {
        format!(
            "val in-batch accuracy {:.3}, zero-shot country accuracy {:.3} (chance {:.3}, {} countries, {} images)",
            self.batch_accuracy, self.country_accuracy, self.country_chance, self.countries, self.samples
        )
    }

    pub fn log(&self, sink: &mut dyn MetricSink, step: u64) {
        sink.scalar("val/batch_accuracy", self.batch_accuracy, step);
        sink.scalar("val/country_accuracy", self.country_accuracy, step);
    }
}

pub fn validate(
    clip: &Pretrained,
    samples: &[Sample],
    captioner: &Captioner,
    g: &Gazetteer,
    batch: usize,
) -> Result<ValMetrics> {
    let device = clip.device();
    let mut countries: Vec<usize> = samples.iter().filter_map(|s| s.place.country).collect();
    countries.sort();
    countries.dedup();
    let prompts: Vec<String> = countries
        .iter()
        .map(|&c| COUNTRY_PROMPT.replace("{}", &g.countries[c].in_sentence()))
        .collect();
    let country_text = if prompts.is_empty() {
        None
    } else {
        let (ids, mask) = clip.tokenize(&prompts)?;
        Some(tch::no_grad(|| {
            clip.model
                .text_features(&ids.to(device), Some(&mask.to(device)))
        }))
    };
    let (h, w) = clip.preprocess.output_size();
    let (mut hits, mut country_hits, mut country_n, mut n) = (0.0, 0usize, 0usize, 0usize);
    for (chunk_index, chunk) in samples.chunks(batch.max(2)).enumerate() {
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * (h * w) as usize);
        let mut captions = Vec::with_capacity(chunk.len());
        for (i, s) in chunk.iter().enumerate() {
            let Ok(img) = s.image.read().and_then(|b| decode(&b)) else {
                continue;
            };
            pixels.extend(clip.preprocess.apply(img)?);
            let index = (chunk_index * batch + i) as u64;
            captions.push(
                s.place
                    .caption
                    .clone()
                    .or_else(|| captioner.caption(&s.place.names, 0, index))
                    .unwrap_or_default(),
            );
        }
        let b = captions.len() as i64;
        if b == 0 {
            continue;
        }
        let pixels = Tensor::from_slice(&pixels)
            .view([b, 3, h as i64, w as i64])
            .to(device);
        let (ids, mask) = clip.tokenize(&captions)?;
        tch::no_grad(|| -> Result<()> {
            let image = clip.model.image_features(&pixels);
            let text = clip
                .model
                .text_features(&ids.to(device), Some(&mask.to(device)));
            let logits = clip.model.logits(&image, &text).logits_per_image;
            let correct = logits
                .argmax(-1, false)
                .eq_tensor(&Tensor::arange(b, (Kind::Int64, device)));
            hits += correct
                .to_kind(Kind::Double)
                .sum(Kind::Double)
                .double_value(&[]);
            n += b as usize;
            if let Some(ct) = &country_text {
                let guesses = Vec::<i64>::try_from(
                    clip.model
                        .logits(&image, ct)
                        .logits_per_image
                        .argmax(-1, false)
                        .to(tch::Device::Cpu),
                )?;
                for (s, guess) in chunk.iter().zip(guesses) {
                    if let Some(truth) = s.place.country {
                        country_n += 1;
                        country_hits += usize::from(countries[guess as usize] == truth);
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(ValMetrics {
        samples: n,
        batch_accuracy: hits / n.max(1) as f64,
        country_accuracy: country_hits as f64 / country_n.max(1) as f64,
        country_chance: 1.0 / countries.len().max(1) as f64,
        countries: countries.len(),
    })
}
