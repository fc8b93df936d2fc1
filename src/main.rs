//! `pleo-auth`: connect Pleo companies and call the Pleo External API from the command line.
//!
//! Run `pleo-auth --help` for the commands, the configuration and the exit codes.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
