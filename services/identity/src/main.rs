//! `pension-identity`: the identity service as a process of its own (the same as `pension identity`).

fn main() -> std::process::ExitCode {
    kit::process::main(kit::process::config_file_from_env(), identity::run)
}
