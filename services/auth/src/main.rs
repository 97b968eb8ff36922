//! `sakuga-auth`: see `sakuga-auth --help`.

fn main() -> std::process::ExitCode {
    sakuga_mesh::service::main::<sakuga_auth::Application>()
}
