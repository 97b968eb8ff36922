//! SQL of the scheduler. Every statement is parameterized and prepared (cached per
//! connection); every state change is one guarded UPDATE.
//!
//! `rows`: the job row and the store over the pool. `submits`: submits, committed in groups
//! per owner. `jobs`: the submit statement and the client's reads and changes (get, list,
//! cancel, retry). `leases`: the queue seen from the workers
//! (claims, leases, progress, completion, failure, hand-backs). `retention`: pruning and
//! the metrics counts. `endpoints`: webhook endpoints; `deliveries`: their outbox.

mod deliveries;
mod endpoints;
mod jobs;
mod leases;
mod retention;
mod rows;
mod submits;

pub use deliveries::{AttemptOutcome, ClaimedDelivery, DisableRule, Recorded};
pub use endpoints::EndpointRow;
pub use jobs::{Inserted, ListFilter, Submitted};
pub use leases::{ClaimFor, Claimed, Completion, Expired};
pub use retention::UNFINISHED_COUNT_LIMIT;
pub use rows::Store;
pub use submits::{FreeSlot, Submits};
