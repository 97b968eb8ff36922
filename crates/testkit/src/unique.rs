//! Names that no other test, nor another test process, uses at the same time.

/// 12 random hex digits: the suffix of a test's database, Redis user and key prefix, and of
/// a process's Vault mounts.
pub(crate) fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
