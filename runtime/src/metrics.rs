//! Per-controller metrics, rendered in the Prometheus text format: reconciles, errors, queue
//! depth and a histogram of reconcile durations. Every controller of the process registers
//! here, and the process's `/metrics` appends [`render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds of the duration histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The metrics of one controller.
pub struct ControllerMetrics {
    name: String,
    reconciles: AtomicU64,
    errors: AtomicU64,
    depth: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
}

/// Objects a cache could not decode into its typed form, in this process.
static UNDECODABLE: AtomicU64 = AtomicU64::new(0);

/// Counts one object a cache left out because it did not decode.
pub fn undecodable() {
    UNDECODABLE.fetch_add(1, Ordering::Relaxed);
}

fn registry() -> &'static Mutex<Vec<Arc<ControllerMetrics>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<ControllerMetrics>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// The metrics of the controller `name`, registered once per process (a restarted controller
/// keeps counting where it left off, as Prometheus expects of a counter).
pub fn controller(name: &str) -> Arc<ControllerMetrics> {
    let mut all = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = all.iter().find(|m| m.name == name) {
        return m.clone();
    }
    let m = Arc::new(ControllerMetrics {
        name: name.to_string(),
        reconciles: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        depth: AtomicU64::new(0),
        buckets: Default::default(),
        sum_micros: AtomicU64::new(0),
    });
    all.push(m.clone());
    m
}

// === impl ControllerMetrics ===

impl ControllerMetrics {
    /// Counts one reconcile that took `took`, and whether it failed.
    pub fn reconciled(&self, took: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sets the queue depth.
    pub fn set_depth(&self, depth: usize) {
        self.depth.store(depth as u64, Ordering::Relaxed);
    }

    /// Reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Failed reconciles so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Every registered controller's metrics in the Prometheus text format.
pub fn render() -> String {
    let all = registry().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP keel_controller_undecodable_objects_total Objects a cache left out because they did not decode into their kind's type.\n# TYPE keel_controller_undecodable_objects_total counter\nkeel_controller_undecodable_objects_total {}",
        UNDECODABLE.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP keel_controller_reconciles_total Reconciles run, by controller.\n# TYPE keel_controller_reconciles_total counter"
    );
    for m in &all {
        let _ = writeln!(
            out,
            "keel_controller_reconciles_total{{controller=\"{}\"}} {}",
            m.name,
            m.reconciles()
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_controller_reconcile_errors_total Reconciles that failed, by controller.\n# TYPE keel_controller_reconcile_errors_total counter"
    );
    for m in &all {
        let _ = writeln!(
            out,
            "keel_controller_reconcile_errors_total{{controller=\"{}\"}} {}",
            m.name,
            m.errors()
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_controller_queue_depth Keys waiting in the work queue, by controller.\n# TYPE keel_controller_queue_depth gauge"
    );
    for m in &all {
        let _ = writeln!(
            out,
            "keel_controller_queue_depth{{controller=\"{}\"}} {}",
            m.name,
            m.depth.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_controller_reconcile_duration_seconds How long reconciles take, by controller.\n# TYPE keel_controller_reconcile_duration_seconds histogram"
    );
    for m in &all {
        for (bound, bucket) in BUCKETS.iter().zip(&m.buckets) {
            let _ = writeln!(
                out,
                "keel_controller_reconcile_duration_seconds_bucket{{controller=\"{}\",le=\"{bound}\"}} {}",
                m.name,
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "keel_controller_reconcile_duration_seconds_bucket{{controller=\"{}\",le=\"+Inf\"}} {}",
            m.name,
            m.reconciles()
        );
        let _ = writeln!(
            out,
            "keel_controller_reconcile_duration_seconds_sum{{controller=\"{}\"}} {}",
            m.name,
            m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "keel_controller_reconcile_duration_seconds_count{{controller=\"{}\"}} {}",
            m.name,
            m.reconciles()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = controller("metrics-test");
        m.reconciled(Duration::from_millis(3), false);
        m.reconciled(Duration::from_millis(300), true);
        m.set_depth(7);
        let text = render();
        assert!(text.contains("keel_controller_reconciles_total{controller=\"metrics-test\"} 2"));
        assert!(
            text.contains("keel_controller_reconcile_errors_total{controller=\"metrics-test\"} 1")
        );
        assert!(text.contains("keel_controller_queue_depth{controller=\"metrics-test\"} 7"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.5\"} 2"));
        assert!(Arc::ptr_eq(&m, &controller("metrics-test")));
    }
}
