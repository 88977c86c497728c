//! An exponential moving average of the weights, the model a run reports and saves for use when its recipe asks
//! for one ([`crate::model::TrainSpec::ema_decay`]).
//!
//! Late in a run of small batches the weights still move from step to step around their trend, and the loss of the
//! last step is one noisy draw of it; the average over the last few hundred steps sits nearer the trend. Training
//! itself never sees the average: the optimizer steps the live weights, and the validation points logged during the
//! run are theirs. At the end the average is measured (the final validation and test) and left in the variables;
//! checkpoints hold it as `ema/<name>` beside the live weights (`model/<name>`), so that a resumed run goes on
//! exactly and [`super::restore_weights`] loads the average.

use crate::error::Error;
use candle_core::{Result, Tensor, Var};

/// The average `a ← d·a + (1 − d)·θ` after every optimizer step, from `a = θ` at the start, over the float
/// variables of a run in the optimizer's order.
#[derive(Debug)]
pub struct WeightAverage {
    decay: f64,
    values: Vec<Tensor>,
}

impl WeightAverage {
    /// An average of `params` starting at their current values; `decay` in `(0, 1)`.
    pub fn new(decay: f64, params: &[(String, Var)]) -> Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            return Err(Error::Config(format!(
                "a weight average needs a decay in (0, 1), not {decay}"
            ))
            .into());
        }
        // Detached: a copy of a variable records the op, and every update would then chain onto the graph of all
        // the previous ones, holding each step's average alive.
        let values = params
            .iter()
            .map(|(_, p)| p.as_tensor().detach().copy())
            .collect::<Result<_>>()?;
        Ok(Self { decay, values })
    }

    /// One step of the average towards the current `params` (the same variables, in the same order).
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        let d = self.decay;
        for (a, (_, p)) in self.values.iter_mut().zip(params) {
            *a = ((&*a * d)? + (p.as_tensor().detach() * (1.0 - d))?)?.detach();
        }
        Ok(())
    }

    /// The average as checkpoint tensors, `ema/<name>`.
    pub fn tensors(&self, params: &[(String, Var)]) -> Vec<(String, Tensor)> {
        params
            .iter()
            .zip(&self.values)
            .map(|((n, _), a)| (format!("ema/{n}"), a.clone()))
            .collect()
    }

    /// Restores the average from checkpoint tensors (looked up by parameter name); an error names a missing one.
    pub fn load(
        &mut self,
        params: &[(String, Var)],
        lookup: impl Fn(&str) -> Option<Tensor>,
    ) -> Result<()> {
        for (a, (name, p)) in self.values.iter_mut().zip(params) {
            let t = lookup(&format!("ema/{name}")).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "the checkpoint holds no weight average for {name} (a run with --ema-decay)"
                ))
            })?;
            if t.dims() != p.dims() {
                return Err(Error::Checkpoint(format!(
                    "the weight average of {name} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    p.dims()
                ))
                .into());
            }
            *a = t.to_device(p.device())?.to_dtype(p.dtype())?;
        }
        Ok(())
    }

    /// Sets `params` to the average.
    pub fn apply(&self, params: &[(String, Var)]) -> Result<()> {
        for (a, (_, p)) in self.values.iter().zip(params) {
            p.set(a)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The average follows `a ← d·a + (1 − d)·θ` and holds plain values: no tensor of it records the ops that made
    /// it (else every step would keep the previous ones alive).
    #[test]
    fn the_average_follows_its_rule_and_keeps_no_graph() -> Result<()> {
        let v = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0, 4.0], &Device::Cpu)?)?;
        let params = vec![("w".to_string(), v.clone())];
        let mut avg = WeightAverage::new(0.5, &params)?;
        let mut expected = [1.0f64, -2.0, 4.0];
        for step in 1..=3 {
            let theta = [step as f64, 0.5 * step as f64, -1.0];
            v.set(&Tensor::new(&theta, &Device::Cpu)?)?;
            avg.update(&params)?;
            for (e, t) in expected.iter_mut().zip(theta) {
                *e = 0.5 * *e + 0.5 * t;
            }
            let saved = avg.tensors(&params);
            assert_eq!(saved[0].0, "ema/w");
            assert!(
                !saved[0].1.track_op(),
                "step {step}: the average records ops"
            );
            assert_eq!(saved[0].1.to_vec1::<f64>()?, expected.to_vec());
        }
        avg.apply(&params)?;
        assert_eq!(v.as_tensor().to_vec1::<f64>()?, expected.to_vec());
        assert!(WeightAverage::new(1.0, &params).is_err());
        Ok(())
    }
}
