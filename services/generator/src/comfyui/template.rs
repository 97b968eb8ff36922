//! Workflow templates: ComfyUI API-format JSON (`{"<node id>": {"class_type", "inputs"}}`)
//! with placeholders. A string value that is exactly `"{{name}}"` becomes the typed value
//! (a number for `seed`, `steps`, ...); inside a longer string, `{{prompt}}` and the other
//! text placeholders are substituted as text.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde_json::{Map, Value};

use super::error::ComfyError;

/// Placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "width",
    "height",
    "batch_size",
    "frames",
    "fps",
    "checkpoint",
    "filename_prefix",
];

/// Templates shipped with the generator: `txt2img` (checkpoint, prompts, KSampler,
/// SaveImage), `animation` (a batch of `frames` latents saved as one animated PNG) and
/// `smoke` (built-in nodes only, no model: checks a ComfyUI without weights).
pub const SHIPPED: &[(&str, &str)] = &[
    ("txt2img", include_str!("../../templates/txt2img.json")),
    ("animation", include_str!("../../templates/animation.json")),
    ("smoke", include_str!("../../templates/smoke.json")),
];

/// A parsed, checked template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Name (file stem).
    pub name: String,
    nodes: Map<String, Value>,
}

/// Values for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    /// Prompt.
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Seed.
    pub seed: u64,
    /// Sampling steps.
    pub steps: u32,
    /// Guidance scale.
    pub cfg: f32,
    /// ComfyUI sampler name.
    pub sampler: String,
    /// ComfyUI scheduler name.
    pub scheduler: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Images per prompt.
    pub batch_size: u32,
    /// Video frames.
    pub frames: u32,
    /// Video frame rate.
    pub fps: u32,
    /// Checkpoint file name.
    pub checkpoint: String,
    /// Output file name prefix.
    pub filename_prefix: String,
}

impl Values {
    fn get(&self, name: &str) -> Option<Value> {
        Some(match name {
            "prompt" => Value::from(self.prompt.as_str()),
            "negative_prompt" => Value::from(self.negative_prompt.as_str()),
            "seed" => Value::from(self.seed),
            "steps" => Value::from(self.steps),
            "cfg" => Value::from(f64::from(self.cfg)),
            "sampler" => Value::from(self.sampler.as_str()),
            "scheduler" => Value::from(self.scheduler.as_str()),
            "width" => Value::from(self.width),
            "height" => Value::from(self.height),
            "batch_size" => Value::from(self.batch_size),
            "frames" => Value::from(self.frames),
            "fps" => Value::from(self.fps),
            "checkpoint" => Value::from(self.checkpoint.as_str()),
            "filename_prefix" => Value::from(self.filename_prefix.as_str()),
            _ => return None,
        })
    }
}

/// The `{{name}}` placeholders in `text`, in order.
fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        found.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    found
}

fn walk<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.extend(placeholders(s)),
        Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        Value::Object(map) => map.values().for_each(|v| walk(v, out)),
        _ => {}
    }
}

impl Template {
    /// Parses and checks a template; errors name the template and the node.
    pub fn parse(name: &str, text: &str) -> Result<Self, ComfyError> {
        let bad = |reason: String| Err(ComfyError::Template { name: name.to_owned(), reason });
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return bad(format!("not valid JSON: {e}")),
        };
        let Value::Object(nodes) = value else {
            return bad("must be an API-format workflow: an object of nodes keyed by id".to_owned());
        };
        if nodes.is_empty() {
            return bad("has no nodes".to_owned());
        }
        for (id, node) in &nodes {
            let Some(class) = node.get("class_type").and_then(Value::as_str).filter(|c| !c.is_empty()) else {
                return bad(format!(
                    "node {id} has no class_type (is this the UI format? export with \"Save (API)\")"
                ));
            };
            let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
                return bad(format!("node {id} ({class}) has no inputs object"));
            };
            let mut found = Vec::new();
            for v in inputs.values() {
                walk(v, &mut found);
                // Links are [node id, output index] and must name a node of this workflow.
                if let Some([Value::String(target), Value::Number(_)]) = v.as_array().map(Vec::as_slice)
                    && !nodes.contains_key(target)
                {
                    return bad(format!("node {id} ({class}) links to node {target}, which does not exist"));
                }
            }
            if let Some(unknown) = found.iter().find(|p| !PLACEHOLDERS.contains(p)) {
                return bad(format!(
                    "node {id} ({class}) uses unknown placeholder {{{{{unknown}}}}} (known: {})",
                    PLACEHOLDERS.join(", ")
                ));
            }
        }
        Ok(Self { name: name.to_owned(), nodes })
    }

    /// Loads the shipped templates, then every `*.json` in `dir` (when given), which may
    /// replace a shipped one of the same name.
    pub fn load_all(dir: Option<&Path>) -> Result<BTreeMap<String, Self>, ComfyError> {
        let mut all = BTreeMap::new();
        for (name, text) in SHIPPED {
            all.insert((*name).to_owned(), Self::parse(name, text)?);
        }
        let Some(dir) = dir else { return Ok(all) };
        let unlisted = |source| ComfyError::TemplatesDir { dir: dir.to_owned(), source };
        for entry in std::fs::read_dir(dir).map_err(unlisted)? {
            let path = entry.map_err(unlisted)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ComfyError::TemplateFile { path: path.clone(), source })?;
            all.insert(name.clone(), Self::parse(&name, &text)?);
        }
        Ok(all)
    }

    /// The node class types the template uses.
    pub fn class_types(&self) -> BTreeSet<&str> {
        self.nodes.values().filter_map(|n| n.get("class_type").and_then(Value::as_str)).collect()
    }

    /// Class type of node `id`.
    pub fn class_of(&self, id: &str) -> Option<&str> {
        self.nodes.get(id)?.get("class_type")?.as_str()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a parsed template has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether any input uses `{{name}}`.
    pub fn uses(&self, name: &str) -> bool {
        let mut found = Vec::new();
        self.nodes.values().filter_map(|n| n.get("inputs")).for_each(|n| walk(n, &mut found));
        found.contains(&name)
    }

    /// Ids of nodes with an input that is exactly `{{steps}}` (the samplers, whose
    /// `progress` messages count sampling steps).
    pub fn step_nodes(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.get("inputs").and_then(Value::as_object).is_some_and(|inputs| {
                    inputs.values().any(|v| v.as_str().is_some_and(|s| s.trim() == "{{steps}}"))
                })
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The workflow for one job.
    pub fn fill(&self, values: &Values) -> Value {
        fn fill_value(v: &Value, values: &Values) -> Value {
            match v {
                Value::String(s) => {
                    let found = placeholders(s);
                    if found.is_empty() {
                        return v.clone();
                    }
                    let whole = s.trim();
                    if found.len() == 1 && whole.starts_with("{{") && whole.ends_with("}}") {
                        return values.get(found[0]).unwrap_or_else(|| v.clone());
                    }
                    // Substituted where found, so `{{ prompt }}` (spaces inside) is filled too.
                    let mut out = String::with_capacity(s.len());
                    let mut rest = s.as_str();
                    while let Some(start) = rest.find("{{") {
                        let after = &rest[start + 2..];
                        let Some(end) = after.find("}}") else { break };
                        out.push_str(&rest[..start]);
                        match values.get(after[..end].trim()) {
                            Some(Value::String(t)) => out.push_str(&t),
                            Some(other) => out.push_str(&other.to_string()),
                            None => out.push_str(&rest[start..start + 2 + end + 2]),
                        }
                        rest = &after[end + 2..];
                    }
                    out.push_str(rest);
                    Value::String(out)
                }
                Value::Array(items) => Value::Array(items.iter().map(|i| fill_value(i, values)).collect()),
                Value::Object(map) => {
                    Value::Object(map.iter().map(|(k, i)| (k.clone(), fill_value(i, values))).collect())
                }
                other => other.clone(),
            }
        }
        // Only inputs are templated (parsing checks placeholders there alone): a node's class
        // and metadata stay as written.
        let fill_node = |node: &Value| {
            let mut node = node.clone();
            if let Some(inputs) = node.get_mut("inputs") {
                *inputs = fill_value(inputs, values);
            }
            node
        };
        Value::Object(self.nodes.iter().map(|(k, n)| (k.clone(), fill_node(n))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            prompt: "a \"quoted\" sky".into(),
            negative_prompt: "blurry".into(),
            seed: 9_007_199_254_740_993,
            steps: 20,
            cfg: 7.0,
            sampler: "euler".into(),
            scheduler: "normal".into(),
            width: 512,
            height: 768,
            batch_size: 2,
            frames: 0,
            fps: 0,
            checkpoint: "model.safetensors".into(),
            filename_prefix: "sakuga/job".into(),
        }
    }

    #[test]
    fn shipped_templates_parse_and_fill_typed_values() {
        let all = Template::load_all(None).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["animation", "smoke", "txt2img"]);
        let t = &all["txt2img"];
        assert!(t.class_types().contains("KSampler"));
        let w = t.fill(&values());
        let sampler = w.as_object().unwrap().values().find(|n| n["class_type"] == "KSampler").unwrap();
        assert_eq!(sampler["inputs"]["steps"], 20);
        assert_eq!(sampler["inputs"]["seed"].as_u64(), Some(9_007_199_254_740_993), "seeds keep all 64 bits");
        let text = w.to_string();
        assert!(text.contains(r#""text":"a \"quoted\" sky""#), "{text}");
        assert!(!text.contains("{{"), "every placeholder filled: {text}");
        assert_eq!(t.step_nodes().len(), 1);
    }

    #[test]
    fn text_placeholders_inside_longer_strings_are_substituted() {
        let t = Template::parse(
            "t",
            r#"{"1":{"class_type":"CLIPTextEncode","inputs":{"text":"masterpiece, {{prompt}}, seed {{ seed }}, {{prompt}}"}}}"#,
        )
        .unwrap();
        let w = t.fill(&values());
        assert_eq!(
            w["1"]["inputs"]["text"], r#"masterpiece, a "quoted" sky, seed 9007199254740993, a "quoted" sky"#,
            "every occurrence, spaces inside the braces or not"
        );
    }

    #[test]
    fn only_inputs_are_filled() {
        let t = Template::parse(
            "t",
            r#"{"1":{"class_type":"{{seed}}","_meta":{"title":"{{prompt}}"},"inputs":{"s":"{{seed}}"}}}"#,
        )
        .unwrap();
        let w = t.fill(&values());
        assert_eq!(w["1"]["class_type"], "{{seed}}");
        assert_eq!(w["1"]["_meta"]["title"], "{{prompt}}");
        assert_eq!(w["1"]["inputs"]["s"].as_u64(), Some(9_007_199_254_740_993));
        assert!(!t.uses("prompt"), "the title is not an input");
    }

    #[test]
    fn broken_templates_are_refused_naming_the_node() {
        for (text, expect) in [
            ("[]", "object of nodes"),
            ("{}", "no nodes"),
            ("{not json", "not valid JSON"),
            (r#"{"1":{"inputs":{}}}"#, "node 1 has no class_type"),
            (r#"{"1":{"class_type":"X"}}"#, "node 1 (X) has no inputs"),
            (
                r#"{"7":{"class_type":"X","inputs":{"a":"{{colour}}"}}}"#,
                "node 7 (X) uses unknown placeholder {{colour}}",
            ),
            (r#"{"2":{"class_type":"SaveImage","inputs":{"images":["99",0]}}}"#, "links to node 99"),
        ] {
            let err = Template::parse("bad", text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
            assert!(err.starts_with("template \"bad\""), "{err}");
        }
    }
}
