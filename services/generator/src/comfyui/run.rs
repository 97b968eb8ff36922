//! Following one prompt over the socket: which events are this prompt's, the progress
//! they add up to (samplers count their steps, every other node 1, cached nodes are done;
//! reported at every node ComfyUI starts and every step a node reports), the previews they
//! carry, and when the outcome is known. No I/O: the caller feeds the
//! events and acts on the returned [`Step`].

use std::collections::BTreeSet;

use sakuga_mesh::metrics::Metrics;
use tracing::warn;

use super::{
    preview,
    template::Template,
    wire::{Finished, WsEvent},
};
use crate::{backend::Sink, comfyui::http::count_refusal};

/// What an event means for the job.
pub(super) enum Step {
    Continue,
    /// `execution_success`: the history is about to be stored.
    Succeeded,
    /// `executing` with `node: null`: the history is stored.
    HistoryStored,
    /// The outcome is known without the history.
    Ended(Finished),
}

/// Progress accounting for one prompt. Units: each node counts 1, except the samplers
/// (nodes fed `{{steps}}`), which count `steps`; cached nodes count as done.
pub(super) struct Run<'a> {
    template: &'a Template,
    pub(super) prompt_id: &'a str,
    max_preview_side: u32,
    metrics: &'a Metrics,
    steps: u32,
    step_nodes: BTreeSet<String>,
    total: u32,
    done_nodes: BTreeSet<String>,
    current: Option<String>,
    step: u32,
    pub(super) started: bool,
    success: bool,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        template: &'a Template,
        steps: u32,
        prompt_id: &'a str,
        max_preview_side: u32,
        metrics: &'a Metrics,
    ) -> Self {
        let step_nodes = template.step_nodes();
        let plain = u32::try_from(template.len() - step_nodes.len()).unwrap_or(u32::MAX);
        let total = plain.saturating_add(steps.saturating_mul(u32::try_from(step_nodes.len()).unwrap_or(0)));
        Self {
            template,
            prompt_id,
            max_preview_side,
            metrics,
            steps,
            step_nodes,
            total,
            done_nodes: BTreeSet::new(),
            current: None,
            step: 0,
            started: false,
            success: false,
        }
    }

    fn weight(&self, node: &str) -> u32 {
        if self.step_nodes.contains(node) { self.steps } else { 1 }
    }

    fn done_units(&self) -> u32 {
        self.done_nodes.iter().map(|n| self.weight(n)).sum()
    }

    fn stage(&self, what: &str, node: &str) -> String {
        format!("{what}: node {node} {}", self.template.class_of(node).unwrap_or("?"))
    }

    /// Whether an event is about this prompt: frames naming another prompt are not;
    /// frames naming none (legacy previews, `executing` after a reconnect) are while this
    /// prompt runs, since ComfyUI sends a prompt's frames only to its client's socket.
    fn ours(&self, prompt_id: Option<&str>) -> bool {
        prompt_id.map_or(self.started, |p| p == self.prompt_id)
    }

    fn finish_current(&mut self) {
        if let Some(node) = self.current.take() {
            self.done_nodes.insert(node);
        }
    }

    pub(super) fn on_event(&mut self, ev: WsEvent, sink: &Sink) -> Step {
        match ev {
            WsEvent::Started { prompt_id } if prompt_id == self.prompt_id => self.started = true,
            WsEvent::Cached { prompt_id, nodes } if prompt_id == self.prompt_id && !nodes.is_empty() => {
                self.done_nodes.extend(nodes);
                self.step = self.step.max(self.done_units());
                sink.step(self.step, self.total, 0, "cached");
            }
            WsEvent::Executing { prompt_id, node } if self.ours(prompt_id.as_deref()) => match node {
                Some(node) if self.current.as_deref() != Some(node.as_str()) => {
                    // Node-level progress: workflows without a sampler (or whose nodes
                    // report no steps) still show where they are.
                    self.finish_current();
                    self.step = self.step.max(self.done_units()).min(self.total);
                    sink.step(self.step, self.total, 0, self.stage("running", &node));
                    self.current = Some(node);
                }
                None if prompt_id.as_deref() == Some(self.prompt_id) => {
                    self.finish_current();
                    return if self.success { Step::HistoryStored } else { Step::Continue };
                }
                // The same node again, or the end named without our prompt id.
                _ => {}
            },
            WsEvent::Progress { prompt_id, node, value, max } if self.ours(prompt_id.as_deref()) => {
                let node = node.or_else(|| self.current.clone()).unwrap_or_default();
                let weight = u64::from(self.weight(&node));
                let partial = u32::try_from(value.min(max) * weight / max.max(1)).unwrap_or(0);
                self.step = self.step.max(self.done_units() + partial).min(self.total);
                sink.step(self.step, self.total, 0, self.stage("sampling", &node));
            }
            WsEvent::Preview { prompt_id, mime, image } if self.ours(prompt_id.as_deref()) => {
                match preview::to_small_png(mime, &image, self.max_preview_side) {
                    Ok(png) => sink.preview(png, self.step, 0),
                    Err(preview::PreviewError::TooLarge { width, height }) => {
                        count_refusal(self.metrics, "comfyui_preview_dimensions");
                        warn!(job_id = %self.prompt_id, width, height, limit = self.max_preview_side,
                              "ComfyUI preview over comfyui.max_preview_side, skipped");
                    }
                    Err(preview::PreviewError::Unreadable) => {}
                }
            }
            WsEvent::Executed { prompt_id, node } if prompt_id == self.prompt_id => {
                self.done_nodes.insert(node);
            }
            WsEvent::Success { prompt_id } if prompt_id == self.prompt_id => {
                self.success = true;
                return Step::Succeeded;
            }
            WsEvent::Error { prompt_id, failure } if prompt_id == self.prompt_id => {
                return Step::Ended(Finished::Failed(failure));
            }
            WsEvent::Interrupted { prompt_id, node_id, node_type } if prompt_id == self.prompt_id => {
                return Step::Ended(Finished::Interrupted { node_id, node_type });
            }
            _ => {}
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    //! The state machine fed the socket frames of real ComfyUI runs, as recorded.

    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use base64::Engine as _;
    use serde_json::Value;

    use super::*;
    use crate::{
        backend::Report,
        comfyui::wire::{parse_binary, parse_text},
    };

    /// The recorded workflows, as templates.
    const FAKE: &str = r#"{"1": {"class_type": "FakeSampler", "inputs": {"width": "{{width}}", "height": "{{height}}", "steps": "{{steps}}", "seed": "{{seed}}"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{filename_prefix}}"}}}"#;
    const EMPTY: &str = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16744448}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fixture_empty"}}}"#;
    const FAILING: &str = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}}, "2": {"class_type": "FailingNode", "inputs": {"image": ["1", 0]}}, "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fixture_fail"}}}"#;

    /// A recording's prompt id (from POST /prompt's answer) and its socket frames as events.
    fn recording(file: &str) -> (String, Vec<WsEvent>) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../crates/testkit/fixtures/comfyui")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut prompt_id = None;
        let mut events = Vec::new();
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            match record["kind"].as_str() {
                Some("ws_text") => events.extend(parse_text(record["raw"].as_str().unwrap())),
                Some("ws_binary") => events.push(parse_binary(
                    &base64::engine::general_purpose::STANDARD
                        .decode(record["b64"].as_str().unwrap())
                        .unwrap(),
                )),
                Some("http") if record["request"]["path"] == "/prompt" => {
                    prompt_id = record["response"]["body"]["prompt_id"].as_str().map(str::to_owned);
                }
                _ => {}
            }
        }
        (prompt_id.expect("a recorded POST /prompt"), events)
    }

    /// What following one prompt gave: the reports, and the steps other than `Continue`
    /// up to the first that ends the job (as `follow` stops there).
    struct Replay {
        reports: Vec<Report>,
        steps: Vec<String>,
        metrics: Arc<Metrics>,
    }

    fn replay(
        template: &str,
        steps: u32,
        file: &str,
        prompt_id: Option<&str>,
        max_preview_side: u32,
    ) -> Replay {
        let template = Template::parse("t", template).unwrap();
        let (recorded_id, events) = recording(file);
        let prompt_id = prompt_id.unwrap_or(&recorded_id);
        let metrics = Metrics::new();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let sink = Sink::new(move |r| seen.lock().unwrap().push(r));
        let mut run = Run::new(&template, steps, prompt_id, max_preview_side, &metrics);
        let mut outcome = Vec::new();
        for ev in events {
            match run.on_event(ev, &sink) {
                Step::Continue => {}
                Step::Succeeded => outcome.push("succeeded".to_owned()),
                Step::HistoryStored => {
                    outcome.push("history stored".to_owned());
                    break;
                }
                Step::Ended(done) => {
                    outcome.push(format!("ended: {done:?}"));
                    break;
                }
            }
        }
        let reports = reports.lock().unwrap().clone();
        Replay { reports, steps: outcome, metrics }
    }

    fn progress(reports: &[Report]) -> Vec<(u32, u32, &str)> {
        reports
            .iter()
            .filter_map(|r| match r {
                Report::Step { step, total, stage, .. } => Some((*step, *total, stage.as_str())),
                Report::Preview { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_sampler_run_counts_its_steps_and_previews_then_waits_for_the_history() {
        let r = replay(FAKE, 8, "07_fake_sampler_ws.jsonl", None, 2048);
        assert_eq!(r.steps, ["succeeded", "history stored"]);
        // The sampler's 8 steps and the save node's 1; the save node's end is not a step.
        let mut expected = vec![(0, 9, "running: node 1 FakeSampler")];
        expected.extend((1..=8).map(|s| (s, 9, "sampling: node 1 FakeSampler")));
        expected.push((8, 9, "running: node 2 SaveImage"));
        assert_eq!(progress(&r.reports), expected);
        let previews: Vec<_> = r
            .reports
            .iter()
            .filter_map(|r| match r {
                Report::Preview { png, step, item } => Some((png, *step, *item)),
                Report::Step { .. } => None,
            })
            .collect();
        assert_eq!(previews.len(), 8, "one preview per recorded binary frame");
        for (i, (png, step, item)) in (1..).zip(previews) {
            assert_eq!((step, item), (i, 0), "a preview carries the step it follows");
            let found = sakuga_imaging::inspect_png(png, sakuga_imaging::Limits::default()).unwrap();
            assert!(found.width.max(found.height) <= 128, "{}x{}", found.width, found.height);
        }
    }

    #[test]
    fn a_fully_cached_run_is_done_at_once() {
        let r = replay(EMPTY, 1, "09_empty_image_cached_ws.jsonl", None, 2048);
        assert_eq!(progress(&r.reports), [(2, 2, "cached")]);
        assert_eq!(r.steps, ["succeeded", "history stored"]);
    }

    #[test]
    fn an_interrupt_ends_the_run_naming_the_node() {
        let r = replay(FAKE, 200, "10_interrupt_ws.jsonl", None, 2048);
        assert_eq!(
            r.steps,
            [format!(
                "ended: {:?}",
                Finished::Interrupted { node_id: "1".into(), node_type: "FakeSampler".into() }
            )]
        );
        let mut expected = vec![(0, 201, "running: node 1 FakeSampler")];
        expected.extend((1..=4).map(|s| (s, 201, "sampling: node 1 FakeSampler")));
        assert_eq!(progress(&r.reports), expected);
    }

    #[test]
    fn a_node_error_ends_the_run_with_the_failure() {
        let r = replay(FAILING, 1, "11_failing_node_ws.jsonl", None, 2048);
        assert_eq!(r.steps.len(), 1, "{:?}", r.steps);
        assert!(r.steps[0].starts_with("ended: Failed("), "{:?}", r.steps);
        assert!(r.steps[0].contains(r#"node_id: "2", node_type: "FailingNode""#), "{:?}", r.steps);
        // No node reports steps: progress is node by node, up to the failing one.
        assert_eq!(
            progress(&r.reports),
            [(0, 3, "running: node 1 EmptyImage"), (1, 3, "running: node 2 FailingNode")]
        );
    }

    #[test]
    fn frames_of_another_prompt_are_not_ours() {
        let r = replay(FAKE, 8, "07_fake_sampler_ws.jsonl", Some("another-prompt"), 2048);
        assert!(r.steps.is_empty(), "{:?}", r.steps);
        assert!(r.reports.is_empty(), "not even the prompt-less previews: {:?}", r.reports);
    }

    #[test]
    fn previews_over_the_cap_are_skipped_and_counted() {
        let r = replay(FAKE, 8, "07_fake_sampler_ws.jsonl", None, 8);
        assert_eq!(r.steps, ["succeeded", "history stored"]);
        assert_eq!(progress(&r.reports).len(), 10, "progress is still reported");
        assert!(r.reports.iter().all(|r| matches!(r, Report::Step { .. })), "no preview: {:?}", r.reports);
        assert!(r.metrics.render().contains("comfyui_preview_dimensions"), "{}", r.metrics.render());
    }
}
