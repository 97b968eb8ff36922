//! Why the `comfyui` backend cannot start: a setting, a template, or a server without what
//! a template needs. Every message names the setting or the template to fix.

use std::{io, path::PathBuf};

/// A configuration the `comfyui` backend refuses; the service does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// A setting is out of range or malformed.
    #[error("{field}: {reason}")]
    Setting {
        /// The setting (`comfyui.urls`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A template is not an API-format workflow Sakuga can fill.
    #[error("template {name:?}: {reason}")]
    Template {
        /// The template's name.
        name: String,
        /// What is wrong, naming the node.
        reason: String,
    },
    /// `comfyui.templates_dir` cannot be listed.
    #[error("comfyui.templates_dir {}: {source}", dir.display())]
    TemplatesDir {
        /// The folder.
        dir: PathBuf,
        /// Why it cannot be listed.
        #[source]
        source: io::Error,
    },
    /// A template file cannot be read.
    #[error("{}: {source}", path.display())]
    TemplateFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: io::Error,
    },
    /// The HTTP client cannot be built.
    #[error("{0}")]
    Client(#[source] reqwest::Error),
    /// A server lacks a node class that a configured template uses.
    #[error(
        "{field}: template {template:?} uses node class {class}, which ComfyUI at {server} does not have"
    )]
    MissingNode {
        /// The setting naming the template.
        field: &'static str,
        /// The template.
        template: String,
        /// The node class the server does not have.
        class: String,
        /// The server.
        server: String,
    },
}

/// A refused setting, naming the field.
pub(super) fn setting(field: &'static str, reason: impl Into<String>) -> ComfyError {
    ComfyError::Setting { field, reason: reason.into() }
}
