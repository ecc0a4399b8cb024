//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` for each
//! family, label values escaped, a histogram's buckets cumulative up to `le="+Inf"`, which
//! equals its `_count`. Numbers in, text out: no I/O.
//! <https://prometheus.io/docs/instrumenting/exposition_formats/>

use std::fmt::Write as _;

use super::shm::{Counts, BUCKETS, CLASSES};
use super::{BUCKET_BOUNDS, METHOD_NAMES};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A live worker that said how it runs its application.
pub struct WorkerInfo {
    pub slot: u32,
    pub pid: u32,
    /// On sub-interpreters (else the main interpreter).
    pub sub: bool,
}

/// What only a supervisor knows.
pub struct SupervisorCounts {
    pub spawns: u64,
    pub restarts: [(&'static str, u64); 5],
}

/// Everything one scrape shows.
pub struct Snapshot {
    /// Counters: every worker's, live or exited.
    pub counters: Counts,
    /// The live workers' counts, for the gauges.
    pub live: Counts,
    /// Worker processes alive.
    pub workers: u64,
    pub info: Vec<WorkerInfo>,
    /// `None` in a single process.
    pub supervisor: Option<SupervisorCounts>,
}

/// Escapes a label value: backslash, double quote and line feed (the format's three).
pub fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `name{k="v",...} value` (no braces without labels).
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label(val, out);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds from nanoseconds, as the format's float.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A float as the format wants it (Rust's `Display` never uses an exponent and prints
/// integers without a point, which the format accepts too).
fn float(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

/// The whole exposition.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let c = &s.counters;
    let live = &s.live;

    family(
        &mut out,
        "spindle_requests_total",
        "counter",
        "Requests the application answered, by method and status class.",
    );
    for (m, method) in METHOD_NAMES.iter().enumerate() {
        for class in 0..CLASSES {
            let status = format!("{}xx", class + 1);
            sample(
                &mut out,
                "spindle_requests_total",
                &[("method", method), ("status", &status)],
                c.requests[m][class],
            );
        }
    }

    family(
        &mut out,
        "spindle_request_duration_seconds",
        "histogram",
        "Time from the request head parsed to the response handed back by the application.",
    );
    let mut cumulative = 0;
    for (i, n) in c.duration_buckets.iter().enumerate() {
        cumulative += n;
        let le = if i + 1 < BUCKETS {
            float(BUCKET_BOUNDS[i])
        } else {
            float(f64::INFINITY)
        };
        sample(
            &mut out,
            "spindle_request_duration_seconds_bucket",
            &[("le", &le)],
            cumulative,
        );
    }
    sample(
        &mut out,
        "spindle_request_duration_seconds_sum",
        &[],
        float(seconds(c.duration_ns)),
    );
    sample(
        &mut out,
        "spindle_request_duration_seconds_count",
        &[],
        cumulative,
    );

    family(
        &mut out,
        "spindle_shed_total",
        "counter",
        "Requests shed by admission control, by reason: queue_wait (answered 503 after --max-queue-wait), client_gone (the client left before a Python thread took it), connections (refused past --worker-connections).",
    );
    for reason in super::ShedReason::ALL {
        sample(
            &mut out,
            "spindle_shed_total",
            &[("reason", reason.label())],
            c.shed[reason as usize],
        );
    }
    family(
        &mut out,
        "spindle_requests_in_flight",
        "gauge",
        "Requests handed to the Python threads and not finished yet.",
    );
    sample(
        &mut out,
        "spindle_requests_in_flight",
        &[],
        live.dispatched.saturating_sub(live.done),
    );
    family(
        &mut out,
        "spindle_request_queue_depth",
        "gauge",
        "Requests waiting for a Python thread.",
    );
    sample(
        &mut out,
        "spindle_request_queue_depth",
        &[],
        live.dispatched.saturating_sub(live.taken),
    );
    family(
        &mut out,
        "spindle_connections_open",
        "gauge",
        "Client connections open.",
    );
    sample(
        &mut out,
        "spindle_connections_open",
        &[],
        live.conns_opened.saturating_sub(live.conns_closed),
    );
    family(
        &mut out,
        "spindle_connections_total",
        "counter",
        "Client connections accepted.",
    );
    sample(&mut out, "spindle_connections_total", &[], c.conns_opened);
    family(
        &mut out,
        "spindle_received_bytes_total",
        "counter",
        "Bytes read from client connections (request heads and bodies).",
    );
    sample(&mut out, "spindle_received_bytes_total", &[], c.received);
    family(
        &mut out,
        "spindle_sent_bytes_total",
        "counter",
        "Bytes written to client connections (response heads and bodies).",
    );
    sample(&mut out, "spindle_sent_bytes_total", &[], c.sent);
    family(
        &mut out,
        "spindle_python_busy_seconds_total",
        "counter",
        "Time Python threads spent serving requests (environ, application, response).",
    );
    sample(
        &mut out,
        "spindle_python_busy_seconds_total",
        &[],
        float(seconds(c.busy_ns)),
    );

    family(
        &mut out,
        "spindle_workers",
        "gauge",
        "Worker processes alive (starting, serving or stopping).",
    );
    sample(&mut out, "spindle_workers", &[], s.workers);
    family(
        &mut out,
        "spindle_worker_info",
        "gauge",
        "One per live worker that has loaded its application: its slot, pid and interpreters.",
    );
    for w in &s.info {
        let (slot, pid) = (w.slot.to_string(), w.pid.to_string());
        let mode = if w.sub { "sub" } else { "main" };
        sample(
            &mut out,
            "spindle_worker_info",
            &[("slot", &slot), ("pid", &pid), ("interpreters", mode)],
            1,
        );
    }
    if let Some(sup) = &s.supervisor {
        family(
            &mut out,
            "spindle_worker_spawns_total",
            "counter",
            "Worker processes the supervisor started.",
        );
        sample(&mut out, "spindle_worker_spawns_total", &[], sup.spawns);
        family(
            &mut out,
            "spindle_worker_restarts_total",
            "counter",
            "Workers replaced, by reason: crash, timeout, max-requests, memory, reload.",
        );
        for (reason, n) in sup.restarts {
            sample(
                &mut out,
                "spindle_worker_restarts_total",
                &[("reason", reason)],
                n,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut counters = Counts::default();
        counters.requests[0][1] = 3;
        counters.requests[2][3] = 1;
        counters.duration_buckets[0] = 2;
        counters.duration_buckets[5] = 1;
        counters.duration_buckets[BUCKETS - 1] = 1;
        counters.duration_ns = 1_500_000_000;
        counters.busy_ns = 250_000_000;
        let live = Counts {
            dispatched: 7,
            taken: 5,
            done: 4,
            conns_opened: 9,
            conns_closed: 6,
            ..Counts::default()
        };
        Snapshot {
            counters,
            live,
            workers: 2,
            info: vec![WorkerInfo {
                slot: 1,
                pid: 42,
                sub: true,
            }],
            supervisor: Some(SupervisorCounts {
                spawns: 3,
                restarts: [
                    ("crash", 1),
                    ("timeout", 0),
                    ("max-requests", 0),
                    ("memory", 0),
                    ("reload", 0),
                ],
            }),
        }
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&snapshot());
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{line}: no # TYPE before it");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn the_histogram_is_cumulative_and_inf_equals_count() {
        let text = render(&snapshot());
        let buckets: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("spindle_request_duration_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), BUCKETS);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert!(text.contains("spindle_request_duration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("spindle_request_duration_seconds_bucket{le=\"0.05\"} 3\n"));
        assert!(text.contains("spindle_request_duration_seconds_bucket{le=\"10\"} 3\n"));
        assert!(text.contains("spindle_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("spindle_request_duration_seconds_count 4\n"));
        assert!(text.contains("spindle_request_duration_seconds_sum 1.5\n"));
    }

    #[test]
    fn counters_gauges_and_labels() {
        let text = render(&snapshot());
        for line in [
            "spindle_requests_total{method=\"GET\",status=\"2xx\"} 3",
            "spindle_requests_total{method=\"POST\",status=\"4xx\"} 1",
            "spindle_requests_total{method=\"other\",status=\"5xx\"} 0",
            "spindle_requests_in_flight 3",
            "spindle_request_queue_depth 2",
            "spindle_connections_open 3",
            "spindle_python_busy_seconds_total 0.25",
            "spindle_workers 2",
            "spindle_worker_info{slot=\"1\",pid=\"42\",interpreters=\"sub\"} 1",
            "spindle_worker_spawns_total 3",
            "spindle_worker_restarts_total{reason=\"crash\"} 1",
            "spindle_worker_restarts_total{reason=\"max-requests\"} 0",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing in\n{text}"
            );
        }
    }

    #[test]
    fn a_single_process_shows_no_supervisor_counters() {
        let mut s = snapshot();
        s.supervisor = None;
        let text = render(&s);
        assert!(!text.contains("spindle_worker_spawns_total"));
        assert!(!text.contains("spindle_worker_restarts_total"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label("a\\b\"c\nd", &mut out);
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        let mut out = String::new();
        sample(&mut out, "x", &[("k", "say \"hi\"")], 1);
        assert_eq!(out, "x{k=\"say \\\"hi\\\"\"} 1\n");
    }
}
