//! Where training metrics go: TensorBoard event files (tensorboard-rs, behind a small trait so
//! the rest of the trainer does not depend on it) and the terminal.

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
        Ok(Self { writer: tensorboard_rs::summary_writer::SummaryWriter::new(dir) })
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
