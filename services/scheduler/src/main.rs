//! `sakuga-scheduler`: see `sakuga-scheduler --help`.

fn main() -> std::process::ExitCode {
    sakuga_mesh::service::main::<sakuga_scheduler::Application>()
}
