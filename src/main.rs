//! The `sniroute` command: parse arguments, load the config, then run it, check
//! it or explain it. Errors end here, as one line on stderr and exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use sniroute::{config, explain, logging, server};

/// Layer-4 load balancer: routes TLS by SNI and HTTP by Host to upstream pools,
/// without terminating anything.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(short, long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the config, print a summary and exit: 0 if valid, 1 if not.
    #[arg(short = 't', long)]
    check: bool,
    /// Dry run: print which listener, route, pool and servers HOST would get.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "check")]
    explain: Option<String>,
    /// With --explain: only the listener bound to this address.
    #[arg(long, value_name = "BIND", requires = "explain")]
    listener: Option<std::net::SocketAddr>,
    /// Do not reload when the config file changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sniroute: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let text = config::read(&cli.config)?;
    let config = config::parse(&text, &cli.config)?;
    if cli.check {
        print(&explain::summary(
            &config,
            &cli.config.display().to_string(),
        ));
        return Ok(());
    }
    if let Some(host) = &cli.explain {
        let out = explain::explain(&config, host, cli.listener).with_context(|| {
            format!(
                "no listener in {} is bound to that port or address",
                cli.config.display()
            )
        })?;
        print(&out);
        return Ok(());
    }
    logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = server::Options {
        path: cli.config,
        text,
        watch: !cli.no_watch,
    };
    runtime.block_on(server::run(config, options))?;
    // Connections still open after the drain are cut here, not awaited.
    runtime.shutdown_background();
    Ok(())
}

/// Writes to stdout; a closed pipe (`sniroute -t | head`) is not an error.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
