//! `peer`: this run's figures beside graphile-worker's from the same run
//! (`benches/peers/graphile/run.sh`, whose JSON `scripts/bench.sh` passes in
//! `BENCH_PEER_JSON`), with the ratios.

use crate::Section;
use serde_json::{Value, json};

/// The first row of section `key` whose `field` equals `value`.
fn find<'a>(sections: &'a [Section], key: &str, field: &str, value: &Value) -> Option<&'a Value> {
    sections.iter().filter(|s| s.key == key).flat_map(|s| &s.data).find(|row| row.get(field) == Some(value))
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn cell(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "not run".to_owned(), |v| format!("{v:.2}{unit}"))
}

/// `ours / theirs` when more is better, `theirs / ours` when less is.
fn ratio(ours: Option<f64>, theirs: Option<f64>, more_is_better: bool) -> Option<f64> {
    let (o, t) = (ours?, theirs?);
    let r = if more_is_better { o / t } else { t / o };
    r.is_finite().then_some(r)
}

/// The comparison of `sections` (this run's) with the peer's report `peer`.
pub fn compare(sections: &[Section], peer: &Value) -> Section {
    let mut section = Section::new(
        "peer",
        "Beside graphile-worker 0.18.0, same machine, same PostgreSQL, same run",
        "The peer's figures come from `benches/peers/graphile/run.sh` run by `make bench` just \
         before the load harness (its JSON `summary`). \"×\" is how many times better Sakuga is \
         (above 1: ahead): jobs/s ours ÷ theirs, latency theirs ÷ ours. The peer's pickup \
         latency runs from its producer's `add_job` call to the task starting; ours from the \
         client's `SubmitJob` to the simulated worker receiving the assignment, through mTLS, a \
         verified token, the rate limiter and the audit trail.",
        &["figure", "Sakuga", "graphile-worker", "×"],
    );
    let s = &peer["summary"];
    let mut add = |figure: String, ours: Option<f64>, theirs: Option<f64>, unit: &str, more: bool| {
        let r = ratio(ours, theirs, more);
        section.row(
            vec![figure.clone(), cell(ours, unit), cell(theirs, unit), cell(r, "×")],
            json!({"figure": figure, "sakuga": ours, "graphile": theirs, "ratio": r}),
        );
    };
    for shape in ["1x10", "2x10"] {
        let ours = num(find(sections, "drain", "shape", &json!(shape)).and_then(|r| r.get("jobs_per_sec")));
        for profile in ["default", "tuned"] {
            let theirs = num(s["throughput_jobs_per_s"].get(format!("{shape}:{profile}")));
            add(format!("drain jobs/s, {shape} (peer {profile})"), ours, theirs, "", true);
        }
    }
    let steady = find(sections, "dispatch", "mode", &json!("steady"));
    for p in ["p50", "p99"] {
        let ours = num(steady.and_then(|r| r["submit_to_assigned"].get(format!("{p}_ms"))));
        let theirs = num(s["latency_ms"]["default"].get(p));
        add(format!("steady 100/s, submit → worker has it, {p}"), ours, theirs, " ms", false);
    }
    let submit = sections
        .iter()
        .filter(|s| s.key == "rpc")
        .flat_map(|s| &s.data)
        .find(|r| r["method"] == "SubmitJob" && r["clients"] == 1);
    let ours = num(submit.and_then(|r| r["latency"].get("p50_ms")));
    let theirs = num(s["latency_ms"]["default"].get("add_job_rtt_p50"));
    add("one client enqueuing, round trip p50".to_owned(), ours, theirs, " ms", false);
    let floor = num(peer["baseline"]["insert_commit_rtt_ms"].get("p50"));
    section.notes.push(format!(
        "This PostgreSQL's floor in the same run: a durable single-row insert and commit {} p50.",
        cell(floor, " ms")
    ));
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_point_the_right_way_and_missing_figures_say_so() {
        assert_eq!(ratio(Some(200.0), Some(100.0), true), Some(2.0));
        assert_eq!(ratio(Some(2.0), Some(4.0), false), Some(2.0));
        assert_eq!(ratio(None, Some(4.0), false), None);
        assert_eq!(ratio(Some(1.0), Some(0.0), true), None);
        let mut drain = Section::new("drain", "", "", &[]);
        drain.row(vec![], json!({"shape": "1x10", "jobs_per_sec": 5000.0}));
        let peer = json!({"summary": {"throughput_jobs_per_s": {"1x10:default": 2500.0}}});
        let out = compare(&[drain], &peer);
        assert_eq!(out.rows[0], ["drain jobs/s, 1x10 (peer default)", "5000.00", "2500.00", "2.00×"]);
        assert_eq!(out.rows[1][2], "not run");
    }
}
