//! Argument parsing and one module per subcommand.

use std::process::ExitCode;

/// Entry point of the `anneal` binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
