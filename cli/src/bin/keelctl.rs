//! `keelctl`: manage Keel's objects the way kubectl users expect.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keel_cli::keelctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keel_cli::keelctl::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
