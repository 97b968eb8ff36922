//! The live progress bar of `--watch`: `[#######.............]  7/20  generating  3.1s  ETA 5.8s`.
//! On a terminal the line is redrawn in place; otherwise every change is a new line, so
//! logs and tests see each frame.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

/// Width of the bar itself, in characters.
const BAR: usize = 24;

/// Seconds with one decimal.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// One frame of the bar. `eta` is estimated from the pace so far.
pub fn render(step: u32, total: u32, stage: &str, elapsed: Duration) -> String {
    let filled = if total == 0 {
        0
    } else {
        usize::try_from(u64::from(step.min(total)) * BAR as u64 / u64::from(total)).unwrap_or(BAR)
    };
    let bar = format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled));
    let eta = if step > 0 && step < total {
        let per_step = elapsed.as_secs_f64() / f64::from(step);
        format!("  ETA {}", secs(Duration::from_secs_f64(per_step * f64::from(total - step))))
    } else {
        String::new()
    };
    format!("{bar} {step:>4}/{total:<4} {stage:<12} {}{eta}", secs(elapsed))
}

/// Draws frames for one job.
#[derive(Debug)]
pub struct Bar {
    started: Instant,
    tty: bool,
    last: Option<String>,
    prefix: String,
}

impl Bar {
    /// A bar for job `label`, on stderr (stdout stays for results).
    pub fn new(label: &str) -> Self {
        Self {
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last: None,
            prefix: format!("{label} "),
        }
    }

    /// Shows progress.
    pub fn update(&mut self, step: u32, total: u32, stage: &str) {
        let frame = render(step, total, stage, self.started.elapsed());
        // Only the step and stage make a new frame; elapsed time alone does not.
        let key = format!("{step}/{total} {stage}");
        if self.last.as_deref() == Some(key.as_str()) {
            return;
        }
        self.last = Some(key);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}{frame}", self.prefix);
        } else {
            let _ = writeln!(err, "{}{frame}", self.prefix);
        }
        let _ = err.flush();
    }

    /// Prints a line below the bar (a status change).
    pub fn note(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err);
        }
        let _ = writeln!(err, "{}{text}", self.prefix);
        self.last = None;
    }

    /// Time since the bar started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_fill_with_the_steps_and_estimate_the_rest() {
        let f = render(5, 20, "generating", Duration::from_secs(2));
        assert_eq!(f, "[######..................]    5/20   generating   2.0s  ETA 6.0s");
        assert_eq!(
            render(20, 20, "uploading", Duration::from_secs(8)),
            "[########################]   20/20   uploading    8.0s"
        );
        assert!(render(0, 0, "queued", Duration::ZERO).starts_with("[........................]    0/0"));
    }
}
