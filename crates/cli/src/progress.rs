//! Progress bars, shown only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use llmrec_models::{Stop, TrainEvent};

/// A bar of `len` steps labelled `msg`; hidden when stderr is not a terminal.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(msg.to_owned());
    pb
}

/// A spinner for work of unknown length; hidden when stderr is not a terminal.
pub fn spinner(msg: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Whether stderr is a terminal (bars shown) or not (plain log lines instead).
pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Prints a line above the bar on a terminal, or to stderr otherwise (a hidden
/// bar would swallow it).
pub fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// Shows a training run of the shared learner on `pb`: a bar over each epoch's steps
/// with the loss and throughput, a line per epoch (loss, time, throughput, and the
/// monitored validation metric with the best so far on validated epochs), and a line when
/// training stops early or at its time limit.
pub fn training(pb: &ProgressBar) -> impl FnMut(&TrainEvent) + '_ {
    let mut best: Option<(String, f64, usize)> = None;
    move |e: &TrainEvent| match e {
        TrainEvent::Started { .. } => {}
        TrainEvent::EpochStart { epoch, steps } => {
            pb.set_length(*steps as u64);
            pb.set_position(0);
            pb.set_message(format!("epoch {epoch}"));
        }
        TrainEvent::Step {
            epoch,
            loss,
            examples_per_sec,
            ..
        } => {
            pb.inc(1);
            pb.set_message(format!("ep {epoch} loss {loss:.4} {examples_per_sec:.0}/s"));
        }
        TrainEvent::Validating { users, .. } => {
            pb.set_message(format!("validating on {users} users"));
        }
        TrainEvent::Evaluated {
            metric,
            best: b,
            best_epoch,
            ..
        } => best = Some((metric.clone(), *b, *best_epoch)),
        TrainEvent::Epoch(r) => {
            let mut line = format!(
                "epoch {}: loss {:.4}, {:.1} s, {:.0} examples/s",
                r.epoch, r.loss, r.seconds, r.examples_per_sec
            );
            if let Some((metric, b, at)) = &best
                && let Some(v) = r.valid.as_ref().and_then(|m| m.get(metric))
            {
                line.push_str(&format!(
                    ", valid {metric} {v:.4} (best {b:.4} at epoch {at})"
                ));
            }
            say(pb, line);
        }
        TrainEvent::Stopped {
            epoch,
            best_epoch,
            reason,
        } => {
            if *reason != Stop::Epochs {
                say(
                    pb,
                    format!(
                        "stopped by {} at epoch {epoch}; best epoch {best_epoch}",
                        reason.label()
                    ),
                );
            }
        }
    }
}

/// Runs `run` under one bar for several models trained one after another: `run`
/// gets a line printer and a training-event callback that names each new model
/// as its first event arrives. The bar is cleared at the end.
pub fn named_trainings<T>(
    run: impl FnOnce(&mut dyn FnMut(&str), &mut dyn FnMut(&str, &TrainEvent)) -> T,
) -> T {
    let pb = bar(0, "training");
    let out = {
        let mut on_train = training(&pb);
        let mut current = String::new();
        run(&mut |line| say(&pb, line.to_string()), &mut |name, e| {
            if name != current {
                current = name.to_string();
                say(&pb, format!("training {name}"));
            }
            on_train(e)
        })
    };
    pb.finish_and_clear();
    out
}
