//! Workflow templates: parsing never panics; a parsed template has nodes, each with a class
//! and inputs, and filling it leaves no known placeholder in any input, keeps each node's
//! class, and adds or loses no node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sakuga_generator::comfyui::template::{PLACEHOLDERS, Template, Values};
use serde_json::Value;

fn values() -> Values {
    Values {
        prompt: "a sky over the sea".into(),
        negative_prompt: "blurry".into(),
        seed: 42,
        steps: 20,
        cfg: 7.0,
        sampler: "euler".into(),
        scheduler: "normal".into(),
        width: 512,
        height: 512,
        batch_size: 1,
        frames: 8,
        fps: 8,
        checkpoint: "model.safetensors".into(),
        filename_prefix: "sakuga/job".into(),
    }
}

/// Whether a string still holds `{{name}}` for a known placeholder (spaces allowed inside).
fn has_placeholder(value: &Value) -> bool {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else { return false };
                if PLACEHOLDERS.contains(&after[..end].trim()) {
                    return true;
                }
                rest = &after[end + 2..];
            }
            false
        }
        Value::Array(items) => items.iter().any(has_placeholder),
        Value::Object(map) => map.values().any(has_placeholder),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(template) = Template::parse("fuzz", text) else { return };
    assert!(!template.is_empty());
    let filled = template.fill(&values());
    let nodes = filled.as_object().expect("a filled workflow is an object of nodes");
    assert_eq!(nodes.len(), template.len());
    for (id, node) in nodes {
        let class = template.class_of(id).expect("every node has a class");
        assert!(!class.is_empty());
        assert_eq!(node["class_type"].as_str(), Some(class));
        assert!(node["inputs"].is_object());
    }
    // Inputs are templated; a node's class and metadata stay as written.
    let left = nodes.values().find(|n| has_placeholder(&n["inputs"]));
    assert!(left.is_none(), "a placeholder survived filling: {left:?}");
    let steps = template.step_nodes();
    assert!(steps.iter().all(|id| template.class_of(id).is_some()));
    // Samplers are the nodes fed `{{steps}}`.
    assert!(steps.is_empty() || template.uses("steps"));
});
