//! Time per named stage, printed at the end of a run like FusionBench's `SimpleProfilerMixin`
//! summary.

use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Profiler {
    stages: Vec<(String, Duration, u32)>,
}

impl Profiler {
    /// Time `f` under `name`, inside a tracing span of the same name.
    pub fn stage<R>(&mut self, name: &str, f: impl FnOnce() -> R) -> R {
        let span = tracing::info_span!("stage", name);
        let _enter = span.enter();
        let start = Instant::now();
        let out = f();
        let took = start.elapsed();
        match self.stages.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, total, calls)) => {
                *total += took;
                *calls += 1;
            }
            None => self.stages.push((name.to_string(), took, 1)),
        }
        tracing::debug!(stage = name, seconds = took.as_secs_f64(), "stage done");
        out
    }

    /// The summary table.
    pub fn summary(&self) -> String {
        let total: f64 = self.stages.iter().map(|(_, d, _)| d.as_secs_f64()).sum();
        let mut out = String::from("Profiler summary\n");
        out.push_str(&format!(
            "{:<24} | {:>18} | {:>9} | {:>14} | {:>12}\n",
            "Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %"
        ));
        out.push_str(&format!("{}\n", "-".repeat(88)));
        for (name, d, calls) in &self.stages {
            let secs = d.as_secs_f64();
            out.push_str(&format!(
                "{:<24} | {:>18.4} | {:>9} | {:>14.4} | {:>12.1}\n",
                name,
                secs / f64::from(*calls),
                calls,
                secs,
                if total > 0.0 {
                    100.0 * secs / total
                } else {
                    0.0
                }
            ));
        }
        out.push_str(&format!(
            "{:<24} | {:>18} | {:>9} | {:>14.4} | {:>12.1}\n",
            "Total", "", "", total, 100.0
        ));
        out
    }
}
