//! The `stampede` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stampede::cli::main().await
}
