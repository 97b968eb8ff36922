//! `sakuga-organizer`: see `sakuga-organizer --help`.

fn main() -> std::process::ExitCode {
    sakuga_mesh::service::main::<sakuga_organizer::Application>()
}
