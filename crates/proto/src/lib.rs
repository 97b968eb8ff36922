//! The `sakuga.v1` API: prost messages, tonic clients and servers, and the encoded file
//! descriptor set for server reflection.

#![allow(
    clippy::pedantic,
    clippy::doc_markdown,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

/// Generated code for package `sakuga.v1`.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("sakuga.v1");
}

/// Encoded `FileDescriptorSet` of every `sakuga.v1` file (with imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sakuga_descriptor");

/// Fully-qualified service names, as reflection and health report them.
pub mod service_names {
    /// `sakuga.v1.AuthService`.
    pub const AUTH: &str = "sakuga.v1.AuthService";
    /// `sakuga.v1.JobService`.
    pub const JOBS: &str = "sakuga.v1.JobService";
    /// `sakuga.v1.ProjectService`.
    pub const PROJECTS: &str = "sakuga.v1.ProjectService";
    /// `sakuga.v1.WebhookService`.
    pub const WEBHOOKS: &str = "sakuga.v1.WebhookService";
    /// `sakuga.v1.WorkerService`.
    pub const WORKER: &str = "sakuga.v1.WorkerService";
    /// `sakuga.v1.FileService`.
    pub const FILES: &str = "sakuga.v1.FileService";
}
