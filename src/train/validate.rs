//! Validation on the held-out split: in-batch image→text retrieval accuracy, and zero-shot
//! country accuracy among the countries of the data (`eval geo`'s country stage, with the
//! config's `geo.country_prompts`).

use super::logger::MetricSink;
use super::loss::pair_accuracy;
use crate::data::{OnError, Sample};
use crate::encode::Encoder;
use crate::eval::geolocate::country_embeddings;
use crate::formats::pretrained::Pretrained;
use crate::geo::Gazetteer;
use crate::model::normalize;
use crate::text::Captioner;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValMetrics {
    /// Samples scored.
    pub samples: usize,
    /// Samples left out because their image could not be read.
    #[serde(default)]
    pub skipped: usize,
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
            "val in-batch accuracy {:.3}, zero-shot country accuracy {:.3} (chance {:.3}, {} countries, {} images{})",
            self.batch_accuracy, self.country_accuracy, self.country_chance, self.countries, self.samples,
            if self.skipped > 0 { format!(", {} unreadable skipped", self.skipped) } else { String::new() }
        )
    }

    pub fn log(&self, sink: &mut dyn MetricSink, step: u64) {
        sink.scalar("val/batch_accuracy", self.batch_accuracy, step);
        sink.scalar("val/country_accuracy", self.country_accuracy, step);
    }
}

/// Scores `samples`; an image that cannot be read is skipped and counted, or an error when
/// `on_error` says fail (as in the training loader), each skip told to `say`.
/// `country_prompts` as `geo.country_prompts`.
#[allow(clippy::too_many_arguments)]
pub fn validate(
    clip: &Pretrained,
    samples: &[Sample],
    captioner: &Captioner,
    g: &Gazetteer,
    country_prompts: &[String],
    batch: usize,
    on_error: OnError,
    say: &dyn Fn(&str),
) -> Result<ValMetrics> {
    let mut countries: Vec<usize> = samples.iter().filter_map(|s| s.place.country).collect();
    countries.sort();
    countries.dedup();
    let country_text = match countries.is_empty() {
        true => None,
        false => Some(country_embeddings(clip, g, &countries, country_prompts)?),
    };
    let scorer = Scorer {
        encoder: Encoder::new(clip, batch),
        countries: &countries,
        country_text: country_text.as_ref(),
    };
    let mut totals = Totals::default();
    let mut pending: Vec<Prepared> = Vec::with_capacity(batch);
    for (i, s) in samples.iter().enumerate() {
        match prepare(clip, captioner, s) {
            Ok(p) => pending.push(p),
            Err(e) if on_error == OnError::Skip => {
                say(&format!("validation: skipped {}: {e:#}", s.origin));
                totals.skipped += 1;
            }
            Err(e) => bail!(
                "validation sample {}: {e:#} (set data.on_error: skip to leave such samples out)",
                s.origin
            ),
        }
        // Batches of readable samples only: a skipped image changes neither which sample a
        // guess is scored against nor the other samples' batches.
        if pending.len() == batch.max(2) || (i + 1 == samples.len() && !pending.is_empty()) {
            scorer.score(&pending, &mut totals)?;
            pending.clear();
        }
    }
    let (n, countries_n) = (totals.samples, countries.len());
    Ok(ValMetrics {
        samples: n,
        skipped: totals.skipped,
        batch_accuracy: totals.hits / n.max(1) as f64,
        country_accuracy: totals.country_hits as f64 / totals.country_n.max(1) as f64,
        country_chance: 1.0 / countries_n.max(1) as f64,
        countries: countries_n,
    })
}

/// A validation sample ready for the model.
struct Prepared<'a> {
    sample: &'a Sample,
    pixels: Vec<f32>,
    caption: String,
}

/// Decodes and captions `s`. Its caption's random choices are keyed by the sample itself (its
/// origin), not its position, so they do not depend on which other samples could be read.
fn prepare<'a>(clip: &Pretrained, captioner: &Captioner, s: &'a Sample) -> Result<Prepared<'a>> {
    let pixels = clip.preprocess.load_ref(&s.image)?;
    let key = u64::from_le_bytes(
        blake3::hash(s.origin.as_bytes()).as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let Some(caption) = s
        .place
        .caption
        .clone()
        .or_else(|| captioner.caption(&s.place.names, 0, key))
    else {
        bail!("the caption template needs a name this sample does not have");
    };
    Ok(Prepared {
        sample: s,
        pixels,
        caption,
    })
}

#[derive(Default)]
struct Totals {
    samples: usize,
    skipped: usize,
    hits: f64,
    country_hits: usize,
    country_n: usize,
}

/// Scores batches against their captions and the candidate countries.
struct Scorer<'a> {
    encoder: Encoder<'a>,
    countries: &'a [usize],
    country_text: Option<&'a Tensor>,
}

impl Scorer<'_> {
    fn score(&self, batch: &[Prepared], totals: &mut Totals) -> Result<()> {
        let (h, w) = self.encoder.clip.preprocess.output_size();
        let pixels: Vec<f32> = batch
            .iter()
            .flat_map(|p| p.pixels.iter().copied())
            .collect();
        let pixels = Tensor::from_slice(&pixels).view([batch.len() as i64, 3, h as i64, w as i64]);
        let captions: Vec<String> = batch.iter().map(|p| p.caption.clone()).collect();
        let images = normalize(&self.encoder.image_features(&pixels));
        let texts = self.encoder.texts(&captions)?;
        // Hits, not a mean: batches differ in size.
        let accuracy = pair_accuracy(&images.matmul(&texts.tr())).double_value(&[]);
        totals.hits += (accuracy * batch.len() as f64).round();
        totals.samples += batch.len();
        if let Some(ct) = self.country_text {
            let guesses = Vec::<i64>::try_from(images.matmul(&ct.tr()).argmax(-1, false))?;
            for (p, guess) in batch.iter().zip(guesses) {
                if let Some(truth) = p.sample.place.country {
                    totals.country_n += 1;
                    totals.country_hits += usize::from(self.countries[guess as usize] == truth);
                }
            }
        }
        Ok(())
    }
}
