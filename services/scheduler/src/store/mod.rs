//! SQL of the scheduler. Every statement is parameterized and prepared (cached per
//! connection); every state change is one guarded UPDATE.
//!
//! `rows`: the job row and the store over the pool. `jobs`: submits and the client's reads
//! and changes (get, list, cancel, retry). `leases`: the queue seen from the workers
//! (claims, leases, progress, completion, failure, hand-backs). `retention`: pruning and
//! the metrics counts.

mod jobs;
mod leases;
mod retention;
mod rows;
mod webhooks;

pub use jobs::{Inserted, ListFilter};
pub use leases::{Claimed, Completion, Expired};
pub use retention::UNFINISHED_COUNT_LIMIT;
pub use rows::Store;
pub use webhooks::{AttemptOutcome, ClaimedDelivery, DisableRule, EndpointRow, Recorded};
