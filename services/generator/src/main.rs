//! `sakuga-generator`: see `sakuga-generator --help`.

fn main() -> std::process::ExitCode {
    sakuga_mesh::service::main::<sakuga_generator::Application>()
}
