//! Where training metrics go: TensorBoard event files (tensorboard-rs, behind a small trait so
//! the rest of the trainer does not depend on it) and the terminal (a progress bar on a
//! terminal, plain periodic lines otherwise).

use std::io::IsTerminal;
use std::path::Path;

pub trait MetricSink {
    fn scalar(&mut self, tag: &str, value: f64, step: u64);
    fn flush(&mut self);
}

/// TensorBoard event files, readable by TensorBoard's own reader. Only the writer's working
/// scalar call is used (its text and hparams calls are unimplemented upstream).
pub struct TensorBoard {
    writer: tensorboard_rs::summary_writer::SummaryWriter,
}

impl TensorBoard {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            writer: tensorboard_rs::summary_writer::SummaryWriter::new(dir),
        })
    }
}

impl MetricSink for TensorBoard {
    fn scalar(&mut self, tag: &str, value: f64, step: u64) {
        self.writer.add_scalar(tag, value as f32, step as usize);
    }
    fn flush(&mut self) {
        self.writer.flush();
    }
}

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// Prints nothing: the other ranks of a data-parallel run.
    pub fn quiet() -> Self {
        Self {
            bar: None,
            quiet: true,
        }
    }

    pub fn new(total: u64, done: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} step {pos}/{len} [{elapsed}<{eta}] {msg}",
                )
                .expect("template"),
            );
            b.set_position(done);
            b
        });
        Self { bar, quiet: false }
    }

    /// Moves the bar (no numbers: those wait for the next log point).
    pub fn advance(&self, step: u64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
        }
    }

    pub fn update(&self, step: u64, total: u64, line: &str, log: bool) {
        match &self.bar {
            Some(b) => {
                b.set_position(step);
                b.set_message(line.to_string());
            }
            None if log && !self.quiet => eprintln!("step {step}/{total} {line}"),
            None => {}
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }
}
