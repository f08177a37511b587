//! One training loop for every model (burn's `Learner`): epochs, the validation
//! cadence, early stopping on validation NDCG@10, a time limit, the `best/`, `last/`
//! and kept checkpoints, `metrics.jsonl` with its plots, and exact resumption.
//!
//! A model implements [`Trainee`]: how one epoch of steps runs, how it validates, and
//! how its checkpoint folder is written. [`fit`] owns everything else, so SASRec and
//! TIGER stop, checkpoint and resume the same way.
//!
//! # Run folder
//!
//! * `metrics.jsonl`: one [`EpochRecord`] per epoch; `loss.svg` and `valid.svg` plot it;
//! * `best/`: the checkpoint with the best validation NDCG@10;
//! * `last/`: the checkpoint after the latest epoch, with the AdamW moments and the
//!   loop's [`LoopState`] (step count, best epoch and metrics, validations since the
//!   best): everything a resume needs;
//! * `epochs/epoch-NNN/`: the weights every `keep_every` epochs (no optimizer state).
//!
//! # Resuming
//!
//! Resumed from a run's own `last/` ([`Resume::own`], [`is_own`]), training goes on in
//! the same folder: the earlier records, the best checkpoint and the early-stopping
//! count are kept, the AdamW moments and step count are restored, and every later
//! epoch draws the same seeded randomness as an uninterrupted run, so on the CPU the
//! result is the same bit for bit (on a GPU, dropout masks come from the device's
//! generator, which is reseeded, not restored). Resumed from another run's `last/`,
//! the weights, moments and step count come along, but the records, the best
//! checkpoint and the early-stopping count start anew.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use llmrec_core::io::{read_jsonl, write_atomic, write_jsonl};
use llmrec_core::plot::{Series, chart};
use llmrec_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::checkpoint_epoch;
use crate::optim::AdamW;

/// The validation metric that early stopping and `best/` follow, and which way is
/// better.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    /// Name of the metric in the validation map (`NDCG@10`, `valid_loss`).
    pub metric: String,
    /// Higher is better (ranking metrics) or lower is (losses).
    pub maximize: bool,
}

impl Monitor {
    /// Validation NDCG@10, higher is better: the recommenders' choice.
    pub fn ndcg10() -> Monitor {
        Monitor {
            metric: "NDCG@10".into(),
            maximize: true,
        }
    }

    /// A loss, lower is better.
    pub fn loss(metric: &str) -> Monitor {
        Monitor {
            metric: metric.into(),
            maximize: false,
        }
    }

    /// Whether `value` beats `best` (anything beats no best).
    fn improves(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => true,
            Some(b) if self.maximize => value > b,
            Some(b) => value < b,
        }
    }
}

/// When to validate, stop and keep weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Last epoch (1-based).
    pub epochs: usize,
    /// Validate every this many epochs, and after the last one.
    pub eval_every: usize,
    /// Stop after this many validations without a better monitored metric (0: never).
    pub patience: usize,
    /// Stop after the epoch in which this many seconds have passed (0: no limit).
    pub max_seconds: f64,
    /// Keep the weights every this many epochs in `epochs/epoch-NNN/` (0: none).
    pub keep_every: usize,
    /// The validation metric `best/` and early stopping follow.
    pub monitor: Monitor,
}

/// Where the loop stands after an epoch; kept in `last/` for resuming.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epoch of the best validation so far (0: none yet).
    pub best_epoch: usize,
    /// Its validation metrics.
    pub best_valid: BTreeMap<String, f64>,
    /// Validations since the best one.
    pub since_best: usize,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (weighted by examples).
    pub loss: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Optimizer steps so far.
    pub steps: usize,
    /// Training seconds of this epoch (without validation).
    pub seconds: f64,
    /// Training examples per second (SASRec: loss positions; TIGER: prefixes).
    pub examples_per_sec: f64,
    /// Validation metrics, on validated epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<BTreeMap<String, f64>>,
    /// Validation seconds.
    #[serde(default)]
    pub valid_seconds: f64,
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stop {
    /// All epochs ran.
    #[serde(rename = "epochs")]
    Epochs,
    /// `patience` validations without improvement.
    #[serde(rename = "early stopping")]
    EarlyStopping,
    /// The time limit passed.
    #[serde(rename = "time limit")]
    TimeLimit,
}

impl Stop {
    /// Words for logs and reports.
    pub fn label(&self) -> &'static str {
        match self {
            Stop::Epochs => "epochs",
            Stop::EarlyStopping => "early stopping",
            Stop::TimeLimit => "time limit",
        }
    }
}

/// What [`fit`] reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Training starts (or resumes) at `start_epoch`; `epochs` is the last.
    Started {
        /// First epoch to run.
        start_epoch: usize,
        /// Last epoch that may run.
        epochs: usize,
    },
    /// An epoch of `steps` optimizer steps begins.
    EpochStart {
        /// 1-based epoch.
        epoch: usize,
        /// Steps in the epoch.
        steps: usize,
    },
    /// One optimizer step finished.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Loss of the step.
        loss: f64,
        /// Training examples per second so far in this epoch.
        examples_per_sec: f64,
    },
    /// Validation starts on this many users.
    Validating {
        /// 1-based epoch.
        epoch: usize,
        /// Users validated.
        users: usize,
    },
    /// A validation finished.
    Evaluated {
        /// 1-based epoch.
        epoch: usize,
        /// The monitored metric's name.
        metric: String,
        /// Its value this time.
        value: f64,
        /// The best so far, this one included.
        best: f64,
        /// Epoch of the best.
        best_epoch: usize,
        /// Whether this one is the new best.
        improved: bool,
    },
    /// An epoch (and its validation, if any) finished.
    Epoch(EpochRecord),
    /// Training stopped.
    Stopped {
        /// Last epoch run.
        epoch: usize,
        /// Epoch of the best checkpoint.
        best_epoch: usize,
        /// Why.
        reason: Stop,
    },
}

/// Totals of one epoch's steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochTotals {
    /// Sum over steps of `loss × examples`.
    pub loss_sum: f64,
    /// Examples trained on.
    pub examples: usize,
}

/// Validation results of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Metric name to value; must hold the monitored metric.
    pub metrics: BTreeMap<String, f64>,
}

/// Which checkpoint [`Trainee::save`] writes.
#[derive(Clone, Copy)]
pub enum Slot<'a> {
    /// `best/`: weights and the validation metrics.
    Best,
    /// `last/`: weights, optimizer moments and the loop state.
    Last {
        /// The loop state to store.
        state: &'a LoopState,
        /// The optimizer whose moments to store.
        optimizer: &'a AdamW,
    },
    /// `epochs/epoch-NNN/`: weights only.
    Kept,
}

/// A model as the learner trains it.
pub trait Trainee {
    /// Runs the optimizer steps of `epoch`, counting them in `step` (global, 1-based
    /// after the first), and reports [`TrainEvent::EpochStart`] and
    /// [`TrainEvent::Step`] through `event`.
    fn train_epoch(
        &mut self,
        epoch: usize,
        step: &mut usize,
        optimizer: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals>;

    /// Users that [`Trainee::validate`] evaluates.
    fn validation_users(&self) -> usize;

    /// Evaluates the current weights on the validation users.
    fn validate(&mut self) -> Result<Validation>;

    /// Writes the current weights into the checkpoint folder `dir` (replacing it
    /// whole), recording `epoch` and `valid` (the validation metrics of this epoch, or
    /// empty).
    fn save(
        &self,
        dir: &Path,
        slot: Slot<'_>,
        epoch: usize,
        valid: &BTreeMap<String, f64>,
    ) -> Result<()>;
}

/// Where a resumed run picks up: the epoch of its `last/` and that folder's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The epoch the `last/` checkpoint was written after.
    pub epoch: usize,
    /// Its loop state.
    pub state: LoopState,
    /// Whether `last/` belongs to the run folder being trained into (then its records
    /// and best checkpoint are this run's).
    pub own: bool,
}

/// What [`fit`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Every epoch of the run, earlier ones of a resumed run included.
    pub records: Vec<EpochRecord>,
    /// Epoch of `best/` (0: never validated).
    pub best_epoch: usize,
    /// Its validation metrics.
    pub best_valid: BTreeMap<String, f64>,
    /// Why training stopped.
    pub stop: Stop,
    /// The last epoch that ran (the resumed epoch when none did).
    pub last_epoch: usize,
    /// Mean training seconds of the epochs this call ran (0 when none ran).
    pub mean_epoch_seconds: f64,
}

/// Whether `last` (a `last/` checkpoint folder to resume from) belongs to the run
/// folder `run_dir`, as paths resolve now (relative paths included).
pub fn is_own(last: &Path, run_dir: &Path) -> bool {
    // `last` itself may be gone (a crash left `last.old`): resolve its parent.
    let parent = std::path::absolute(last)
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.canonicalize().ok()));
    parent.is_some() && parent == run_dir.canonicalize().ok()
}

/// The records of `metrics.jsonl`, or none if there is no such file.
pub fn read_records(path: &Path) -> Result<Vec<EpochRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    read_jsonl(path, "an epoch record")
}

/// Keeps an epoch's totals and reports its steps, for [`Trainee::train_epoch`]:
/// [`EpochMeter::start`] reports [`TrainEvent::EpochStart`], [`EpochMeter::check`]
/// refuses a loss that is not finite (before the step is applied), and
/// [`EpochMeter::record`] counts a finished step and reports [`TrainEvent::Step`].
pub struct EpochMeter {
    epoch: usize,
    started: Instant,
    totals: EpochTotals,
}

impl EpochMeter {
    /// Starts epoch `epoch` of `steps` steps.
    pub fn start(epoch: usize, steps: usize, event: &mut dyn FnMut(&TrainEvent)) -> EpochMeter {
        event(&TrainEvent::EpochStart { epoch, steps });
        EpochMeter {
            epoch,
            started: Instant::now(),
            totals: EpochTotals {
                loss_sum: 0.0,
                examples: 0,
            },
        }
    }

    /// An error naming `model`, the epoch and the 1-based `step` when `loss` is
    /// not finite.
    pub fn check(&self, model: &str, step: usize, loss: f64) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        Err(Error::model(
            model,
            format!("loss became {loss} at epoch {}, step {step}", self.epoch),
        ))
    }

    /// Counts step `step` (1-based) of `examples` examples with mean loss `loss`.
    pub fn record(
        &mut self,
        step: usize,
        loss: f64,
        examples: usize,
        event: &mut dyn FnMut(&TrainEvent),
    ) {
        self.totals.loss_sum += loss * examples as f64;
        self.totals.examples += examples;
        event(&TrainEvent::Step {
            epoch: self.epoch,
            step,
            loss,
            examples_per_sec: self.totals.examples as f64
                / self.started.elapsed().as_secs_f64().max(1e-9),
        });
    }

    /// The epoch's totals.
    pub fn totals(&self) -> EpochTotals {
        self.totals
    }
}

fn write_records(dir: &Path, title: &str, records: &[EpochRecord]) -> Result<()> {
    write_jsonl(&dir.join("metrics.jsonl"), records)?;
    let loss = chart(
        &format!("{title} training loss"),
        "epoch",
        &[Series {
            name: "train loss",
            points: records.iter().map(|r| (r.epoch as f64, r.loss)).collect(),
        }],
    );
    write_atomic(&dir.join("loss.svg"), loss.as_bytes())?;
    let metric = |name: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r.epoch as f64, *r.valid.as_ref()?.get(name)?)))
            .collect()
    };
    let valid = chart(
        &format!("{title} validation (full ranking)"),
        "epoch",
        &[
            Series {
                name: "NDCG@10",
                points: metric("NDCG@10"),
            },
            Series {
                name: "Recall@10",
                points: metric("Recall@10"),
            },
        ],
    );
    write_atomic(&dir.join("valid.svg"), valid.as_bytes())
}

/// Trains `trainee` with `optimizer` as `schedule` says, writing the run folder
/// `run_dir` (see the module docs). `title` names the model in plots. With `resume`,
/// the weights and optimizer must already hold the `last/` checkpoint's.
pub fn fit(
    run_dir: &Path,
    title: &str,
    schedule: &Schedule,
    trainee: &mut dyn Trainee,
    optimizer: &mut AdamW,
    resume: Option<Resume>,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<Outcome> {
    if schedule.epochs == 0 || schedule.eval_every == 0 {
        return Err(Error::config("epochs/eval_every", "must be positive"));
    }
    let started = Instant::now();
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let best_dir = run_dir.join("best");
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut state = LoopState::default();
    let mut records = Vec::new();
    let mut best: Option<(usize, BTreeMap<String, f64>)> = None;
    let mut start_epoch = 1;
    if let Some(r) = resume {
        start_epoch = r.epoch + 1;
        state = r.state;
        if r.own {
            records = read_records(&metrics_path)?;
            records.retain(|x| x.epoch <= r.epoch);
            // The best is kept when `best/` holds the saved best epoch, or an epoch
            // after `last/` (a crash came between writing `best/` and `last/`: that
            // epoch is trained again, identically, and its validation saves it again).
            let on_disk = checkpoint_epoch(&best_dir);
            if state.best_epoch > 0
                && (on_disk == Some(state.best_epoch) || on_disk.is_some_and(|e| e > r.epoch))
            {
                best = Some((state.best_epoch, state.best_valid.clone()));
            }
        }
        if best.is_none() {
            // No best to compare with: early stopping counts afresh.
            state.best_epoch = 0;
            state.best_valid.clear();
            state.since_best = 0;
        }
    }
    let mut stop = Stop::Epochs;
    if schedule.patience > 0 && state.since_best >= schedule.patience {
        // A resumed run that had already stopped early trains no further.
        start_epoch = schedule.epochs + 1;
        stop = Stop::EarlyStopping;
    }
    event(&TrainEvent::Started {
        start_epoch,
        epochs: schedule.epochs,
    });
    let mut last_epoch = start_epoch.saturating_sub(1);
    let mut epoch_seconds = Vec::new();
    for epoch in start_epoch..=schedule.epochs {
        let t0 = Instant::now();
        let totals = trainee.train_epoch(epoch, &mut state.step, optimizer, event)?;
        let seconds = t0.elapsed().as_secs_f64();
        epoch_seconds.push(seconds);
        last_epoch = epoch;
        let mut record = EpochRecord {
            epoch,
            loss: totals.loss_sum / totals.examples.max(1) as f64,
            lr: optimizer.learning_rate(),
            steps: state.step,
            seconds,
            examples_per_sec: totals.examples as f64 / seconds.max(1e-9),
            valid: None,
            valid_seconds: 0.0,
        };
        let out_of_time =
            schedule.max_seconds > 0.0 && started.elapsed().as_secs_f64() >= schedule.max_seconds;
        if epoch % schedule.eval_every == 0 || epoch == schedule.epochs || out_of_time {
            event(&TrainEvent::Validating {
                epoch,
                users: trainee.validation_users(),
            });
            let tv = Instant::now();
            let v = trainee.validate()?;
            record.valid_seconds = tv.elapsed().as_secs_f64();
            let m = &schedule.monitor;
            let score = v.metrics.get(&m.metric).copied().ok_or_else(|| {
                Error::Invalid(format!("validation did not report `{}`", m.metric))
            })?;
            let improved = m.improves(
                score,
                best.as_ref().and_then(|(_, b)| b.get(&m.metric).copied()),
            );
            if improved {
                best = Some((epoch, v.metrics.clone()));
                state.best_epoch = epoch;
                state.best_valid = v.metrics.clone();
                state.since_best = 0;
                trainee.save(&best_dir, Slot::Best, epoch, &v.metrics)?;
            } else {
                state.since_best += 1;
            }
            let best_score = best
                .as_ref()
                .and_then(|(_, b)| b.get(&m.metric).copied())
                .unwrap_or(score);
            event(&TrainEvent::Evaluated {
                epoch,
                metric: m.metric.clone(),
                value: score,
                best: best_score,
                best_epoch: state.best_epoch,
                improved,
            });
            record.valid = Some(v.metrics);
        }
        event(&TrainEvent::Epoch(record.clone()));
        let valid = record.valid.clone().unwrap_or_default();
        records.push(record);
        write_records(run_dir, title, &records)?;
        // The kept epoch before `last/`: a crash between the two repeats this epoch
        // on resume instead of losing its weights.
        if schedule.keep_every > 0 && epoch % schedule.keep_every == 0 {
            let kept = run_dir.join("epochs").join(format!("epoch-{epoch:03}"));
            trainee.save(&kept, Slot::Kept, epoch, &valid)?;
        }
        // Everything a resume needs, after every epoch.
        trainee.save(
            &run_dir.join("last"),
            Slot::Last {
                state: &state,
                optimizer,
            },
            epoch,
            &valid,
        )?;
        if schedule.patience > 0 && state.since_best >= schedule.patience {
            stop = Stop::EarlyStopping;
            break;
        }
        if out_of_time {
            stop = Stop::TimeLimit;
            break;
        }
    }
    event(&TrainEvent::Stopped {
        epoch: last_epoch,
        best_epoch: state.best_epoch,
        reason: stop,
    });
    let (best_epoch, best_valid) = best.unwrap_or_default();
    Ok(Outcome {
        records,
        best_epoch,
        best_valid,
        stop,
        last_epoch,
        mean_epoch_seconds: if epoch_seconds.is_empty() {
            0.0
        } else {
            epoch_seconds.iter().sum::<f64>() / epoch_seconds.len() as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_folder_belongs_to_its_run_however_its_path_is_written() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        let other = t.path().join("other");
        for d in [run.join("last"), run.join("x"), other.join("last")] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert!(is_own(&run.join("last"), &run));
        assert!(is_own(&run.join(".").join("last"), &run));
        assert!(is_own(&run.join("x").join("..").join("last"), &run));
        assert!(!is_own(&other.join("last"), &run));
        // A `last/` that a crash left as `last.old` is still the run's.
        assert!(is_own(&run.join("gone"), &run));
        assert!(!is_own(&other.join("gone"), &run));
    }
}
