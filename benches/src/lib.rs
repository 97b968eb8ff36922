//! Benchmarks of Sakuga live in `benches/` (run with `make bench`); this library is empty.
