//! Summary.

use super::*;

/// Ratios read from the criterion estimates this run wrote, and notes.
#[derive(Default)]
pub(crate) struct Summary {
    pub(crate) ratios: Vec<(
        String,
        &'static str,
        &'static str,
        &'static str,
        Option<f64>,
    )>,
    /// Ratios measured outside criterion: what, ours, baseline, goal.
    pub(crate) measured: Vec<(String, Duration, Duration, Option<f64>)>,
    pub(crate) notes: Vec<String>,
}

impl Summary {
    pub(crate) fn ratio(
        &mut self,
        what: String,
        group: &'static str,
        ours: &'static str,
        baseline: &'static str,
        goal: Option<f64>,
    ) {
        self.ratios.push((what, group, ours, baseline, goal));
    }

    pub(crate) fn measured(
        &mut self,
        what: String,
        ours: Duration,
        baseline: Duration,
        goal: Option<f64>,
    ) {
        self.measured.push((what, ours, baseline, goal));
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(crate) fn print(&self, started: SystemTime) {
        println!(
            "\n==== summary (ratios measured in this run: criterion estimates, and the paired request medians) ===="
        );
        for (what, group, ours, baseline, goal) in &self.ratios {
            let (Some(a), Some(b)) = (
                estimate(group, ours, started),
                estimate(group, baseline, started),
            ) else {
                println!("{what}: no estimate from this run");
                continue;
            };
            print_ratio(what, a, b, *goal);
        }
        for (what, ours, baseline, goal) in &self.measured {
            print_ratio(
                what,
                ours.as_nanos() as f64,
                baseline.as_nanos() as f64,
                *goal,
            );
        }
        for note in &self.notes {
            println!("{note}");
        }
    }
}

/// One summary line: `ours` against `baseline` (nanoseconds), and the goal's verdict.
pub(crate) fn print_ratio(what: &str, ours: f64, baseline: f64, goal: Option<f64>) {
    let ratio = ours / baseline;
    let verdict = match goal {
        Some(goal) => format!(" (goal <= {goal}x: {})", met(ratio <= goal)),
        None => String::new(),
    };
    println!(
        "{what}: {} vs {} -> {ratio:.2}x{verdict}",
        show_ns(ours),
        show_ns(baseline)
    );
}

pub(crate) fn show_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.3} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} us", ns / 1_000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Criterion's output directory, found as criterion finds it.
pub(crate) fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// The time per iteration criterion estimated for `group/function` in this run (nanoseconds).
pub(crate) fn estimate(group: &str, function: &str, started: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < started {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    estimates["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| estimates["mean"]["point_estimate"].as_f64())
}
