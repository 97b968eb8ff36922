//! ComfyUI's HTTP JSON answers: `/history/{id}` and POST /prompt's error answer. Never
//! panics; outputs are only files saved to the output folder; what users see of a failure
//! is short, on one line, and carries neither the exception message nor the traceback.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sakuga_generator::comfyui::wire::{
    Finished, MAX_VISIBLE_CHARS, MAX_VISIBLE_ERRORS, describe_invalid_prompt, outputs, parse_history,
};
use serde_json::Value;

/// "node <id> (<class>) input <name>: <message>", each part at most MAX_VISIBLE_CHARS + 1.
const MAX_PART: usize = 4 * (MAX_VISIBLE_CHARS + 3) + 20;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };

    let shown = describe_invalid_prompt(&body);
    assert!(shown.starts_with("ComfyUI refused the workflow: "));
    assert!(!shown.contains('\n'), "visible error spans lines: {shown:?}");
    assert!(
        shown.chars().count() <= 40 + MAX_VISIBLE_ERRORS * (MAX_PART + 2),
        "visible error too long: {} chars",
        shown.chars().count()
    );

    let ids: Vec<String> = body.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    for id in ids.iter().map(String::as_str).chain(["missing"]) {
        match parse_history(&body, id) {
            None => assert!(body.get(id).is_none(), "an entry for {id} was ignored"),
            Some(Finished::Success(files)) => {
                let listed = outputs(body[id].get("outputs").unwrap_or(&Value::Null));
                assert_eq!(files, listed);
            }
            Some(Finished::Failed(failure)) => {
                let shown = failure.describe();
                assert!(!shown.contains('\n'), "visible error spans lines: {shown:?}");
                assert!(shown.chars().count() <= 3 * (MAX_VISIBLE_CHARS + 1) + 40, "too long: {shown}");
                let message = failure.exception_message.trim();
                if message.chars().count() > 3 * (MAX_VISIBLE_CHARS + 1) + 40 {
                    assert!(!shown.contains(message), "the exception message is visible");
                }
            }
            Some(Finished::Interrupted { .. }) => {}
        }
    }

    // Every listed output is a saved file (type "output") with a name.
    for file in outputs(&body) {
        let node = &body[&file.node];
        let listed = node.as_object().into_iter().flat_map(|keys| keys.values()).any(|list| {
            list.as_array()
                .into_iter()
                .flatten()
                .any(|f| f["type"] == "output" && f["filename"].as_str() == Some(file.filename.as_str()))
        });
        assert!(listed, "output {file:?} is not a saved file of its node");
    }
});
