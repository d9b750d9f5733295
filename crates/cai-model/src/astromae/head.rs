//! `concat_block`: Linear(vit + inception + magnitude = 3216, 1024) -> ReLU -> Linear(1024, 1).
//! The ReLU output is the model's "features"; the last Linear is a dot product.

use super::layers::Linear;
use crate::kernels::{Epilogue, Ops, PackedB};
use crate::weights::Vb;
use crate::Error;

/// The regression head.
#[derive(Debug, Clone)]
pub(crate) struct ConcatBlock {
    fc0: Linear,
    /// `concat_block.2.weight` (one row).
    pub(crate) last_w: Vec<f32>,
    /// `concat_block.2.bias`.
    pub(crate) last_b: f32,
    pub(crate) inputs: usize,
}

impl ConcatBlock {
    pub(crate) fn load(root: &Vb, inputs: usize) -> Result<Self, Error> {
        let vb = root.pp("concat_block");
        let hidden = vb.pp(0).dim("weight", 2, 0)?;
        let fc0 = Linear::load(&vb.pp(0), inputs, hidden)?;
        let w = vb.pp(2).get("weight", &[1, hidden])?;
        let b = vb.pp(2).get("bias", &[1])?;
        Ok(Self {
            fc0,
            last_w: w.data.clone(),
            last_b: b.data[0],
            inputs,
        })
    }

    /// Visits the packed weight of `concat_block.0` (the last Linear is a dot product in
    /// f32, not a GEMM).
    pub(crate) fn weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        self.fc0.weights_mut(f)
    }

    /// Width of the features (1024).
    pub(crate) fn hidden(&self) -> usize {
        self.fc0.out_features()
    }

    /// `m` concatenated rows -> `m x hidden` features (after ReLU).
    pub(crate) fn features(&self, ops: &Ops, m: usize, concat: &[f32], out: &mut [f32]) {
        let h = self.hidden();
        self.fc0
            .forward(ops, m, concat, self.inputs, out, h, Epilogue::RELU);
    }

    /// The last Linear on one feature row.
    pub(crate) fn predict_row(&self, feat: &[f32]) -> f32 {
        // f64 accumulation: 1024 terms, negligible cost.
        let s: f64 = feat
            .iter()
            .zip(&self.last_w)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        (s + self.last_b as f64) as f32
    }
}
