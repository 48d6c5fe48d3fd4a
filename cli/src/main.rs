use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any other thread exists (see the function's docs).
    anneal::keep_candle_ops_on_calling_thread();
    anneal_cli::commands::main()
}
