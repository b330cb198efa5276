//! The step arithmetic exactly as `train_network.py` computes it (contract
//! §3–§4): train samples T = Σ repeats × images; regularisation images are
//! registered round-robin until their samples reach T; an epoch holds
//! ceil((T + reg) / batch) batches; with `--max_train_epochs` the run is
//! epochs × ceil(batches / processes / gradient accumulation) steps.

use serde::{Deserialize, Serialize};

/// `--max_train_steps` when neither epochs nor steps are given.
pub const DEFAULT_MAX_STEPS: u64 = 1600;

/// One subset as counted: images directly in its folder, and its repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubsetCount {
    pub images: u64,
    pub repeats: u64,
    pub is_reg: bool,
}

/// How long a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// `--max_train_epochs`.
    Epochs(u64),
    /// `--max_train_steps`.
    Steps(u64),
}

/// The arithmetic of one run, as the trainer will do it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    /// `(images, repeats)` of each train subset.
    pub train: Vec<(u64, u64)>,
    /// T: train images × repeats, summed.
    pub train_samples: u64,
    /// Regularisation images (each counted once).
    pub reg_images: u64,
    /// Reg samples after balancing against T.
    pub reg_samples: u64,
    /// Batches in one epoch.
    pub batches_per_epoch: u64,
    pub batch_size: u64,
    pub gradient_accumulation: u64,
    /// `Some` when the run length is given in epochs.
    pub epochs: Option<u64>,
    /// What the trainer logs as `total optimization steps`.
    pub steps: u64,
}

/// Reg samples the trainer registers for `reg` (repeats of each reg image,
/// in order) against `train_samples`: every image once with its repeats,
/// then one more repeat per image round-robin, stopping as soon as the
/// count reaches the train samples (so some images may go unused).
pub fn balanced_reg_samples(reg: &[u64], train_samples: u64) -> u64 {
    if reg.is_empty() {
        return 0;
    }
    let mut n = 0u64;
    let mut first_loop = true;
    while n < train_samples {
        for repeats in reg {
            n += if first_loop { *repeats } else { 1 };
            if n >= train_samples {
                break;
            }
        }
        first_loop = false;
    }
    n
}

/// The run's arithmetic. `batch_size`, `gradient_accumulation` and
/// `processes` of 0 are taken as 1. With batch sizes above 1 this assumes
/// one bucket (images of one size), as the trainer's count is per bucket.
pub fn compute(
    subsets: &[SubsetCount],
    batch_size: u64,
    gradient_accumulation: u64,
    processes: u64,
    length: Option<Length>,
) -> StepPlan {
    let batch_size = batch_size.max(1);
    let gradient_accumulation = gradient_accumulation.max(1);
    let processes = processes.max(1);
    let train: Vec<(u64, u64)> = subsets
        .iter()
        .filter(|s| !s.is_reg && s.images > 0)
        .map(|s| (s.images, s.repeats))
        .collect();
    let train_samples: u64 = train.iter().map(|(i, r)| i * r).sum();
    let reg: Vec<u64> = subsets
        .iter()
        .filter(|s| s.is_reg)
        .flat_map(|s| std::iter::repeat_n(s.repeats, s.images as usize))
        .collect();
    let reg_samples = balanced_reg_samples(&reg, train_samples);
    let batches_per_epoch = (train_samples + reg_samples).div_ceil(batch_size);
    let (epochs, steps) = match length {
        Some(Length::Epochs(e)) => (
            Some(e),
            e * batches_per_epoch
                .div_ceil(processes)
                .div_ceil(gradient_accumulation),
        ),
        Some(Length::Steps(s)) => (None, s),
        None => (None, DEFAULT_MAX_STEPS),
    };
    StepPlan {
        train,
        train_samples,
        reg_images: reg.len() as u64,
        reg_samples,
        batches_per_epoch,
        batch_size,
        gradient_accumulation,
        epochs,
        steps,
    }
}

impl StepPlan {
    /// One line: `train 23 images × 10 repeats = 230; reg 100 images
    /// balanced to 230; 460 per epoch / batch 1 × 4 epochs = 1840 steps`.
    pub fn describe(&self) -> String {
        let train = if self.train.is_empty() {
            "train 0 images".to_string()
        } else {
            let parts: Vec<String> = self
                .train
                .iter()
                .map(|(i, r)| format!("{i} images × {r} repeats"))
                .collect();
            format!("train {} = {}", parts.join(" + "), self.train_samples)
        };
        let reg = if self.reg_images == 0 {
            "no reg images".to_string()
        } else {
            format!(
                "reg {} images balanced to {}",
                self.reg_images, self.reg_samples
            )
        };
        let accumulation = if self.gradient_accumulation > 1 {
            format!(" / accumulation {}", self.gradient_accumulation)
        } else {
            String::new()
        };
        let length = match self.epochs {
            Some(e) => format!(
                "{} per epoch / batch {}{accumulation} × {e} epochs = {} steps",
                self.train_samples + self.reg_samples,
                self.batch_size,
                self.steps
            ),
            None => format!(
                "{} batches per epoch; max-steps {} = {} steps",
                self.batches_per_epoch, self.steps, self.steps
            ),
        };
        format!("{train}; {reg}; {length}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subset(images: u64, repeats: u64, is_reg: bool) -> SubsetCount {
        SubsetCount {
            images,
            repeats,
            is_reg,
        }
    }

    #[test]
    fn the_users_run_is_1840_steps_with_reg_and_920_without() {
        let with_reg = compute(
            &[subset(23, 10, false), subset(100, 1, true)],
            1,
            1,
            1,
            Some(Length::Epochs(4)),
        );
        assert_eq!(with_reg.train_samples, 230);
        assert_eq!(with_reg.reg_samples, 230);
        assert_eq!(with_reg.batches_per_epoch, 460);
        assert_eq!(with_reg.steps, 1840);
        assert_eq!(
            with_reg.describe(),
            "train 23 images × 10 repeats = 230; reg 100 images balanced to 230; \
             460 per epoch / batch 1 × 4 epochs = 1840 steps"
        );
        let without = compute(&[subset(23, 10, false)], 1, 1, 1, Some(Length::Epochs(4)));
        assert_eq!(without.steps, 920);
    }

    #[test]
    fn the_real_stack_dataset_is_160_steps() {
        // Observed on sd-scripts 3e6935a: 4 × 10 train, 3 reg, 2 epochs.
        let plan = compute(
            &[subset(4, 10, false), subset(3, 1, true)],
            1,
            1,
            1,
            Some(Length::Epochs(2)),
        );
        assert_eq!((plan.reg_samples, plan.batches_per_epoch), (40, 80));
        assert_eq!(plan.steps, 160);
    }

    #[test]
    fn reg_balancing_overshoots_by_first_loop_repeats_and_ignores_extra_images() {
        // First loop adds each image's repeats: 3 + 3 = 6 ≥ 5.
        assert_eq!(balanced_reg_samples(&[3, 3, 3], 5), 6);
        // More reg images than train samples: only some are used.
        assert_eq!(balanced_reg_samples(&[1; 100], 7), 7);
        // No train samples: reg contributes nothing.
        assert_eq!(balanced_reg_samples(&[1; 10], 0), 0);
        assert_eq!(balanced_reg_samples(&[], 10), 0);
    }

    #[test]
    fn batches_round_up_and_steps_divide_by_accumulation() {
        let plan = compute(&[subset(5, 1, false)], 2, 2, 1, Some(Length::Epochs(3)));
        assert_eq!(plan.batches_per_epoch, 3);
        assert_eq!(plan.steps, 3 * 2);
        let fixed = compute(&[subset(5, 1, false)], 1, 1, 1, Some(Length::Steps(6)));
        assert_eq!(fixed.steps, 6);
        assert_eq!(compute(&[], 1, 1, 1, None).steps, DEFAULT_MAX_STEPS);
    }
}
