//! `pension-units`: the units service as a process of its own (the same as `pension units`).

fn main() -> std::process::ExitCode {
    kit::process::main(kit::process::config_file_from_env(), units::run)
}
