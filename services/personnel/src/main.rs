//! `pension-personnel`: the personnel service as a process of its own (the same as `pension personnel`).

fn main() -> std::process::ExitCode {
    kit::process::main(kit::process::config_file_from_env(), personnel::run)
}
