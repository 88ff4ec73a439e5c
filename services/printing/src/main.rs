//! `pension-printing`: the printing service as a process of its own (the same as `pension printing`).

fn main() -> std::process::ExitCode {
    kit::process::main(kit::process::config_file_from_env(), printing::run)
}
