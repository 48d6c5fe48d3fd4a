use std::process::ExitCode;

fn main() -> ExitCode {
    anneal_cli::commands::main()
}
