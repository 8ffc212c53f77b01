//! A latency histogram that threads record into without locks and `/metrics` shows in Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Durations counted into cumulative buckets from 0.5 ms to 10 s, with their count and sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bucket, le) in self.buckets.iter().zip(BUCKETS) {
            if secs <= le {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends the histogram to `out` as the Prometheus metric `name` (in seconds) with its help text.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", load(bucket));
        }
        let count = load(&self.count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", load(&self.sum_us) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Histogram;

    #[test]
    fn durations_fall_into_every_bucket_at_or_above_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "seam_x_seconds", "Some durations.");
        assert!(out.starts_with(
            "# HELP seam_x_seconds Some durations.\n# TYPE seam_x_seconds histogram\n"
        ));
        for line in [
            "seam_x_seconds_bucket{le=\"0.0005\"} 1\n",
            "seam_x_seconds_bucket{le=\"0.002\"} 1\n",
            "seam_x_seconds_bucket{le=\"0.005\"} 2\n",
            "seam_x_seconds_bucket{le=\"10\"} 2\n",
            "seam_x_seconds_bucket{le=\"+Inf\"} 3\n",
            "seam_x_seconds_sum 20.0033\n",
            "seam_x_seconds_count 3\n",
        ] {
            assert!(out.contains(line), "{line} not in\n{out}");
        }
    }
}
