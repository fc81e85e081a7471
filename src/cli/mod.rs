//! The verbs of the `ferry` binary. Exit codes: 0 ok, 1 failed, 2 bad usage.

mod admin;
mod docs;
mod enroll;
mod export;
mod hash;
mod image;
mod inspect;
mod job;
mod job_view;
pub mod progress;
mod pull;

mod send;
mod serve;
mod store;
mod wave_view;

use clap::Parser;

use crate::cmdline::{Cli, Command};

/// Exit code for a failure that is not bad usage.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for bad usage (clap uses the same).
pub const EXIT_USAGE: i32 = 2;

/// Parses the arguments, runs the verb and returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Hash(a) => hash::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Job(c) => job::run(c),
        Command::Send(a) => send::run(a),
        Command::Pull(a) => pull::run(a),
        Command::Export(a) => export::run(a),
        Command::Store(crate::cmdline::StoreCommand::Verify(a)) => store::verify(a),
        Command::Image(crate::cmdline::ImageCommand::Build(a)) => image::run(a),
        Command::Completions { shell } => docs::completions(shell),
        Command::Manpages { out } => docs::manpages(&out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            EXIT_FAILED
        }
    }
}

impl crate::cmdline::AgentArgs {
    /// The receiver endpoint these arguments name.
    pub fn endpoint(&self, token: &str) -> crate::agent::Endpoint {
        crate::agent::Endpoint {
            server: self.server.clone(),
            token: token.to_string(),
            pin: self.pin.clone(),
            plain_http: self.plain_http,
            retry_for: std::time::Duration::from_secs(self.retry_for),
        }
    }
}

/// A multi-threaded tokio runtime for the verbs that talk over the network.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let env = env_logger::Env::new().filter_or("FERRY_LOG", default);
    let _ = env_logger::Builder::from_env(env).format_timestamp_secs().try_init();
}
