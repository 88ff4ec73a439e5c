//! `pension-gateway`: the gateway as a process of its own (the same as `pension gateway`).

fn main() -> std::process::ExitCode {
    kit::process::main(kit::process::config_file_from_env(), gateway::run)
}
