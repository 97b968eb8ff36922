//! `sakuga`: the command-line client.

fn main() -> std::process::ExitCode {
    sakuga_cli::main()
}
