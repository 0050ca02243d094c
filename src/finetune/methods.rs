//! `streetclip finetune`: runs each configured method on the same split into `RUN_DIR/<method>/`
//! (checkpoints, TensorBoard, `export/` with the head beside the HF model, `metrics.json`, the
//! test report) and keeps `RUN_DIR/comparison.md` / `.json` comparing every method run there.

use super::head::{ClassHead, HEAD_INFO};
use super::head::{ClassLabels, Classifier};
use super::split::{self, Splits};
use super::{logistic, wise};
use crate::config::Config;
use crate::config::Method;
use crate::data::classes::LabelledImage;
use crate::data::places::Place;
use crate::data::{ImageRef, Sample};
use crate::dist::{Dist, DistEnv};
use crate::eval::classification::{
    class_metrics, comparison_table, most_probable, prediction_rows, write_predictions,
    write_report, ClassMetrics,
};
use crate::model::weights::named_tensors;
use crate::pretrained::Pretrained;
use crate::tensor_io::write_atomic;
use crate::train::objective::{Contrastive, Objective};
use crate::train::trainer::{build_model, join_job, Run, RunOptions, Summary};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One WiSE-FT mix's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WiseResult {
    pub alpha: f64,
    pub val_accuracy: Option<f64>,
    pub test: ClassMetrics,
    pub export: PathBuf,
}

/// What `RUN_DIR/<method>/metrics.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: Method,
    pub classes: Vec<String>,
    pub train_images: usize,
    pub val_images: usize,
    /// Validation accuracy (a fraction), when there is a validation split.
    pub val_accuracy: Option<f64>,
    /// The test split's metrics.
    pub test: ClassMetrics,
    /// The linear probe's chosen inverse L2 strength.
    pub chosen_c: Option<f64>,
    pub wise_ft: Vec<WiseResult>,
    pub export: PathBuf,
    #[serde(default, skip_deserializing)]
    pub training: Option<Summary>,
    /// Each test image's predicted class and its probability (`predictions.csv`).
    #[serde(skip)]
    pub test_predictions: Vec<(usize, f64)>,
}

/// A classifier on the test split: its metrics and each image's (class, probability).
struct TestResult {
    metrics: ClassMetrics,
    predictions: Vec<(usize, f64)>,
}

fn classes_of(predictions: &[(usize, f64)]) -> Vec<usize> {
    predictions.iter().map(|p| p.0).collect()
}

/// One `finetune` invocation: its config, split, device and process group, shared by the
/// methods it runs in turn.
struct FinetuneRun<'a> {
    cfg: &'a Config,
    config_yaml: &'a str,
    options: &'a RunOptions,
    splits: Splits,
    device: tch::Device,
    env: DistEnv,
    dist: Dist,
}

/// Runs the configured methods; returns their results in order.
pub fn run(
    cfg: &Config,
    config_yaml: &str,
    out: &Path,
    options: &RunOptions,
) -> Result<Vec<MethodResult>> {
    let methods = cfg.finetune.method.clone();
    if methods.is_empty() {
        bail!("finetune.method lists no method: choose from zero_shot, linear_probe, contrastive, classifier, geocells");
    }
    if methods.contains(&Method::Geocells) && methods.len() > 1 {
        bail!("finetune.method: geocells geolocates rather than classifies, so it is not compared with the classification methods; run it alone (method: geocells) and compare it with zero-shot models by `streetclip eval geo`");
    }
    let (env, dist, device) = join_job(cfg)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    if methods == [Method::Geocells] {
        eprintln!("finetune: geocells");
        let dir = out.join(Method::Geocells.name());
        // Every rank trains; rank 0 alone exports and evaluates.
        let evals = super::geocells::run(cfg, config_yaml, &dir, options, (&env, &dist, device))?;
        if env.rank == 0 {
            write_geocells_summary(out, &evals)?;
        }
        return Ok(vec![]);
    }
    if dist.world_size > 1 {
        bail!("the classification methods run as one process (this is rank {} of {}): launch them without torchrun/--nproc-per-node", env.rank, env.world_size);
    }
    let splits = split::load(&cfg.finetune, cfg.train.seed)?;
    write_atomic(
        &out.join("split.json"),
        &serde_json::to_vec_pretty(&splits.sizes())?,
    )?;
    splits.write_csv(&out.join("split.csv"))?;
    let sizes = splits.sizes();
    eprintln!(
        "finetune: {} classes; {} train, {} val, {} test images",
        sizes.classes, sizes.train, sizes.val, sizes.test
    );
    let task = FinetuneRun {
        cfg,
        config_yaml,
        options,
        splits,
        device,
        env,
        dist,
    };
    let mut results = Vec::new();
    for method in methods {
        let dir = out.join(method.name());
        eprintln!("finetune: {}", method.name());
        let mut result = match method {
            Method::ZeroShot => task.zero_shot(&dir)?,
            Method::LinearProbe => task.linear_probe(&dir)?,
            Method::Contrastive | Method::Classifier => task.fine_tune(method, &dir)?,
            Method::Geocells => unreachable!("geocells runs alone, above"),
        };
        let about = format!(
            "Method `{}` on {} test images of {} classes.",
            method.name(),
            result.test.n,
            result.classes.len()
        );
        write_report(
            &dir,
            &format!("Fine-tuning: {}", method.name()),
            &about,
            &result.test,
        )?;
        write_atomic(
            &dir.join("metrics.json"),
            &serde_json::to_vec_pretty(&result)?,
        )?;
        let rows = prediction_rows(&result.classes, &task.splits.test, &result.test_predictions);
        write_predictions(&dir.join("predictions.csv"), &rows)?;
        result.training = None;
        eprintln!(
            "finetune: {}: test accuracy {:.1}%",
            method.name(),
            100.0 * result.test.accuracy
        );
        results.push(result);
    }
    write_comparison(out)?;
    Ok(results)
}

impl FinetuneRun<'_> {
    fn names(&self) -> &[String] {
        &self.splits.caption_names
    }

    fn templates(&self) -> &[String] {
        &self.cfg.finetune.templates
    }

    /// L2-normalised image embeddings `[n, d]` of `items`.
    fn embed(&self, clip: &Pretrained, items: &[LabelledImage]) -> Result<Tensor> {
        let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
        crate::encode::Encoder::new(clip, self.cfg.train.micro_batch_size).files(&paths)
    }

    /// Predicted classes of `items` and their probabilities under the linear classifier
    /// `(weight, bias)`.
    fn predict(
        &self,
        clip: &Pretrained,
        weight: &Tensor,
        bias: &Tensor,
        items: &[LabelledImage],
    ) -> Result<Vec<(usize, f64)>> {
        let logits = tch::no_grad(|| {
            self.embed(clip, items).map(|x| {
                x.linear(
                    &weight.to_kind(Kind::Float).to_device(x.device()),
                    Some(&bias.to_kind(Kind::Float).to_device(x.device())),
                )
            })
        })?;
        most_probable(&logits.softmax(-1, Kind::Double))
    }

    fn truth(items: &[LabelledImage]) -> Vec<usize> {
        items.iter().map(|i| i.class).collect()
    }

    /// Validation accuracy, and the test split's metrics and predictions, of a linear classifier.
    fn score(
        &self,
        clip: &Pretrained,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<(Option<f64>, TestResult)> {
        let s = &self.splits;
        let val = if s.val.is_empty() {
            None
        } else {
            let guesses = self.predict(clip, weight, bias, &s.val)?;
            Some(class_metrics(&s.classes, &Self::truth(&s.val), &classes_of(&guesses)).accuracy)
        };
        let test = self.predict(clip, weight, bias, &s.test)?;
        Ok((val, self.test_result(test)))
    }

    fn test_result(&self, predictions: Vec<(usize, f64)>) -> TestResult {
        let s = &self.splits;
        let metrics = class_metrics(&s.classes, &Self::truth(&s.test), &classes_of(&predictions));
        TestResult {
            metrics,
            predictions,
        }
    }

    /// Writes `clip` (with its head) as a Hugging Face directory plus `head.json`.
    fn export(
        &self,
        clip: &Pretrained,
        dir: &Path,
        method: Method,
        alpha: Option<f64>,
    ) -> Result<()> {
        let info = serde_json::json!({
            "method": method.name(),
            "classes": self.splits.classes,
            "caption_names": self.splits.caption_names,
            "templates": self.templates(),
            "input": "L2-normalised CLIP image embeddings (CLIPModel image_embeds); logits = head.weight @ x + head.bias",
            "wise_ft_alpha": alpha,
        });
        clip.save_with(dir, |dir| {
            write_atomic(&dir.join(HEAD_INFO), &serde_json::to_vec_pretty(&info)?)
        })
    }

    fn result(
        &self,
        method: Method,
        val_accuracy: Option<f64>,
        test: TestResult,
        export: PathBuf,
    ) -> MethodResult {
        let s = &self.splits;
        MethodResult {
            method,
            classes: s.classes.clone(),
            train_images: s.train.len(),
            val_images: s.val.len(),
            val_accuracy,
            test: test.metrics,
            chosen_c: None,
            wise_ft: vec![],
            export,
            training: None,
            test_predictions: test.predictions,
        }
    }

    /// The model every method starts from (a fresh one drawn with the run's seed, as the trainer does).
    fn initial_model(&self) -> Result<Pretrained> {
        tch::manual_seed(self.cfg.train.seed as i64);
        build_model(self.cfg, self.device)
    }

    fn zero_shot(&self, dir: &Path) -> Result<MethodResult> {
        let mut clip = self.initial_model()?;
        let (w, b) = ClassHead::zero_shot(&clip, self.names(), self.templates())?;
        let (val, test) = self.score(&clip, &w, &b)?;
        ClassHead::attach_with(&mut clip, &w, &b);
        self.export(&clip, &dir.join("export"), Method::ZeroShot, None)?;
        Ok(self.result(Method::ZeroShot, val, test, dir.join("export")))
    }

    /// Features of every split, computed once and kept in `dir/features.safetensors` (a rerun
    /// resumes from them).
    fn features(&self, clip: &Pretrained, dir: &Path) -> Result<[Tensor; 3]> {
        let path = dir.join("features.safetensors");
        let s = &self.splits;
        let wanted = [
            s.train.len() as i64,
            s.val.len() as i64,
            s.test.len() as i64,
        ];
        if let Ok(saved) = crate::tensor_io::read(&path) {
            let map: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
            if let (Some(a), Some(b), Some(c)) = (map.get("train"), map.get("val"), map.get("test"))
            {
                if [a.size()[0], b.size()[0], c.size()[0]] == wanted {
                    eprintln!("linear_probe: features from {}", path.display());
                    return Ok([a.shallow_clone(), b.shallow_clone(), c.shallow_clone()]);
                }
            }
        }
        let f = [
            self.embed(clip, &s.train)?,
            self.embed(clip, &s.val)?,
            self.embed(clip, &s.test)?,
        ];
        std::fs::create_dir_all(dir)?;
        crate::tensor_io::write(
            &path,
            &[
                ("train".into(), f[0].shallow_clone()),
                ("val".into(), f[1].shallow_clone()),
                ("test".into(), f[2].shallow_clone()),
            ],
        )?;
        Ok(f)
    }

    fn linear_probe(&self, dir: &Path) -> Result<MethodResult> {
        let s = &self.splits;
        if s.val.is_empty() {
            bail!("the linear probe chooses its L2 strength on a validation split: set finetune.val or a positive finetune.val_fraction");
        }
        if self.cfg.finetune.c_grid.is_empty() || self.cfg.finetune.c_grid.iter().any(|&c| c <= 0.0)
        {
            bail!("finetune.c_grid must list positive values");
        }
        let mut clip = self.initial_model()?;
        let [train, val, test] = self.features(&clip, dir)?;
        let (train_y, val_y) = (Self::truth(&s.train), Self::truth(&s.val));
        let mut best: Option<(f64, f64, logistic::Logistic)> = None;
        for &c in &self.cfg.finetune.c_grid {
            let model = logistic::fit(&train, &train_y, s.classes.len(), c)?;
            let acc = class_metrics(&s.classes, &val_y, &model.predict(&val)).accuracy;
            eprintln!(
                "linear_probe: C = {c:e}: validation accuracy {:.1}% ({} L-BFGS iterations)",
                100.0 * acc,
                model.iterations
            );
            // Ties keep the stronger regularisation (the grid's earlier value).
            if best.as_ref().is_none_or(|(_, a, _)| acc > *a) {
                best = Some((c, acc, model));
            }
        }
        let (c, val_acc, model) = best.expect("a non-empty grid");
        let test_m = self.test_result(most_probable(&model.probabilities(&test))?);
        ClassHead::attach_with(&mut clip, &model.weight, &model.bias);
        self.export(&clip, &dir.join("export"), Method::LinearProbe, None)?;
        Ok(MethodResult {
            chosen_c: Some(c),
            ..self.result(
                Method::LinearProbe,
                Some(val_acc),
                test_m,
                dir.join("export"),
            )
        })
    }

    /// Training samples whose captions are the class names through the templates (cycled).
    fn samples(&self) -> Vec<Sample> {
        let templates = self.templates();
        self.splits
            .train
            .iter()
            .enumerate()
            .map(|(i, item)| Sample {
                image: ImageRef::File(item.path.clone()),
                place: Place {
                    caption: Some(
                        templates[i % templates.len()].replace("{}", &self.names()[item.class]),
                    ),
                    ..Place::default()
                },
                origin: item.path.display().to_string(),
            })
            .collect()
    }

    /// The linear classifier a (fine-tuned) model is evaluated with: its head, or the
    /// zero-shot classifier of its text tower.
    fn classifier_of(&self, clip: &Pretrained) -> Result<(Tensor, Tensor)> {
        match ClassHead::of(clip) {
            Some(h) => Ok(h.parameters()),
            None => ClassHead::zero_shot(clip, self.names(), self.templates()),
        }
    }

    fn fine_tune(&self, method: Method, dir: &Path) -> Result<MethodResult> {
        let mut objective: Box<dyn Objective> = match method {
            Method::Classifier => Box::new(Classifier::new(
                self.names().to_vec(),
                self.templates().to_vec(),
                ClassLabels(self.splits.train.iter().map(|i| i.class as i64).collect()),
            )),
            _ => Box::new(Contrastive {
                accumulation: self.cfg.train.accumulation,
            }),
        };
        let run = Run {
            cfg: self.cfg,
            config_yaml: self.config_yaml,
            out: dir,
            options: self.options,
            env: &self.env,
            dist: &self.dist,
            device: self.device,
        };
        let (summary, mut tuned) = run.train(self.samples(), vec![], objective.as_mut())?;
        if method == Method::Contrastive {
            let (w, b) = ClassHead::zero_shot(&tuned, self.names(), self.templates())?;
            ClassHead::attach_with(&mut tuned, &w, &b);
        }
        let (w, b) = self.classifier_of(&tuned)?;
        let (val, test) = self.score(&tuned, &w, &b)?;
        self.export(&tuned, &dir.join("export"), method, None)?;
        // WiSE-FT against the initial model with its zero-shot head.
        let mut initial = self.initial_model()?;
        ClassHead::attach(&mut initial, self.names(), self.templates())?;
        // Copies: `initial`'s variables are overwritten by each mix.
        let theta0: Vec<(String, Tensor)> = named_tensors(&initial.model.vs)
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        let theta1 = named_tensors(&tuned.model.vs);
        let mut mixes = Vec::new();
        for &alpha in &self.cfg.finetune.wise_ft {
            let mixed = wise::interpolate(&theta0, &theta1, alpha)?;
            wise::assign(&initial.model.vs, &mixed)?;
            if method == Method::Contrastive {
                // The zero-shot head follows the mixed text tower.
                let (w, b) = ClassHead::zero_shot(&initial, self.names(), self.templates())?;
                wise::assign(
                    &initial.model.vs,
                    &[
                        (format!("{}.weight", super::head::PREFIX), w),
                        (format!("{}.bias", super::head::PREFIX), b),
                    ],
                )?;
            }
            let (w, b) = self.classifier_of(&initial)?;
            let (val_accuracy, test) = self.score(&initial, &w, &b)?;
            let export = dir.join(format!("export-wise-{alpha}"));
            self.export(&initial, &export, method, Some(alpha))?;
            eprintln!(
                "finetune: {} WiSE-FT alpha {alpha}: test accuracy {:.1}%",
                method.name(),
                100.0 * test.metrics.accuracy
            );
            mixes.push(WiseResult {
                alpha,
                val_accuracy,
                test: test.metrics,
                export,
            });
        }
        Ok(MethodResult {
            wise_ft: mixes,
            training: Some(summary),
            ..self.result(method, val, test, dir.join("export"))
        })
    }
}

/// `comparison.md` for a geocells run: its test evaluations side by side (refined, centroid).
fn write_geocells_summary(out: &Path, evals: &[crate::eval::geo_eval::GeoEval]) -> Result<()> {
    let refs: Vec<&crate::eval::geo_eval::GeoEval> = evals.iter().collect();
    let md = format!(
        "# Fine-tuning: geocells on the test split ({} images)\n\n{}\nFull evaluation: `geocells/test/report.md`; compare with zero-shot models by `streetclip eval geo --manifest geocells/test.csv`.\n",
        evals.first().map_or(0, |e| e.metrics.n),
        crate::eval::report::metric_table(&refs)
    );
    write_atomic(&out.join("comparison.md"), md.as_bytes())
}

/// `comparison.md` and `comparison.json` over every method's `metrics.json` in `out`.
pub fn write_comparison(out: &Path) -> Result<()> {
    let mut rows: Vec<(String, ClassMetrics)> = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metrics.json").is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        let Ok(r) = serde_json::from_slice::<MethodResult>(&std::fs::read(d.join("metrics.json"))?)
        else {
            continue;
        };
        rows.push((r.method.name().to_string(), r.test.clone()));
        for w in r.wise_ft {
            rows.push((
                format!("{} + WiSE-FT α={}", r.method.name(), w.alpha),
                w.test,
            ));
        }
    }
    let table = comparison_table(&rows.iter().map(|(n, m)| (n.clone(), m)).collect::<Vec<_>>());
    let md = format!("# Fine-tuning: methods compared on the same test split\n\n{table}\nEach method's report: `<method>/report.md`.\n");
    write_atomic(&out.join("comparison.md"), md.as_bytes())?;
    let json: serde_json::Map<String, serde_json::Value> = rows.iter().map(|(n, m)| (n.clone(), serde_json::json!({"accuracy": m.accuracy, "balanced_accuracy": m.balanced_accuracy, "macro_f1": m.macro_f1, "n": m.n}))).collect();
    write_atomic(
        &out.join("comparison.json"),
        &serde_json::to_vec_pretty(&json)?,
    )
}
