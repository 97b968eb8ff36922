//! The generator's wire, both ways: the session with the scheduler and the upload client
//! of the organizer. With `convert`, the only modules that know the proto types.

pub(crate) mod organizer;
pub(crate) mod scheduler;
