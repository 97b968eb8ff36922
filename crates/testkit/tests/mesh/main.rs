//! The mesh on real components: four services in-process with real mTLS, OpenBao,
//! PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod auth_load;
mod claims;
mod comfyui;
mod comfyui_tls;
mod common;
mod data_tier;
mod files;
mod generator;
mod handoff;
mod identity;
mod job_path;
mod line;
mod metrics;
mod outage;
mod perimeter;
mod plans;
mod platform;
mod queue;
mod reflection;
mod security;
mod startup;
mod submits;
mod tls;
mod tracing;
mod watch;
mod webhooks;
