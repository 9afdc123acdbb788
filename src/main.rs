//! The `sniroute` command: parse arguments, load the config, then run it, check
//! it or explain it; or translate an nginx config (`import-nginx`); or print an
//! ACME account key's thumbprint (`acme-thumbprint`). Errors end
//! here, as one line on stderr and exit code 1; a lossy import exits with
//! [`EXIT_LOSSY`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sniroute::pool::Registry;
use sniroute::{acme, config, explain, import, logging, server, upgrade};

/// Every connection allocates its task, two reactor registrations and a few
/// small buffers: with glibc's malloc a fifth of the user-space instructions
/// per proxied connection went to the allocator, with mimalloc 6%.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `import-nginx` printed a config, but something that decides who may
/// connect, where connections go or what servers receive was not carried
/// over (and `--allow-lossy` was not given).
const EXIT_LOSSY: u8 = 3;

/// Layer-4 load balancer: routes TLS by SNI and HTTP by Host to upstream pools,
/// without terminating anything.
#[derive(Debug, Parser)]
// A subcommand stands alone: `--config`, `--check` and the rest belong to running.
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    after_help = "See --help for signals, [log] settings and environment variables.",
    after_long_help = AFTER_LONG_HELP
)]
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
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `--help` adds after the options: what changes a running sniroute
/// besides its arguments.
const AFTER_LONG_HELP: &str = "\
Signals:
  SIGHUP           reload the config (also reloaded when the file changes,
                   unless --no-watch)
  SIGTERM, SIGINT  graceful stop: stop accepting, let open connections finish
                   for up to timeouts.shutdown, then exit; a second signal
                   exits at once
  SIGUSR2          binary upgrade: start the binary at this process's path
                   (as the file is now) with the same arguments, on the same
                   listening sockets; once it is ready, stop accepting and
                   drain as for SIGTERM. If it fails, keep serving and log why

Logging, in the config file (logs go to stderr):
  [log]
  level = \"info\"       error | warn | info | debug | trace
  format = \"text\"      \"text\" (key=value) or \"json\" (one object per line)
  access_log = true    one line per connection when it ends, at any level

Environment:
  RUST_LOG              replaces log.level and log.access_log (tracing
                        EnvFilter syntax, e.g. RUST_LOG=debug)
  SNIROUTE_RELAY=copy   copy bytes through user space instead of splice(2)
  SNIROUTE_RELAY=sockmap
                        let the kernel relay through a BPF sockmap (needs
                        CAP_BPF and CAP_NET_ADMIN; else splice, with a warning)
  NOTIFY_SOCKET         set by systemd for Type=notify: start-up, reloads and
                        the stop are reported there; on SIGTERM the listening
                        sockets go to its fd store (unless FDSTORE=0), and
                        LISTEN_FDS hands them back at the next start
  TOKIO_WORKER_THREADS  threads serving connections (default: one per CPU)";

#[derive(Debug, Subcommand)]
enum Command {
    /// Translate the `stream {}` block of an nginx config (and its includes)
    /// into a sniroute config, printed on stdout. Comments name every nginx
    /// directive (file:line) that was not carried over; so do warnings on stderr.
    #[command(
        after_help = "Exit status: 0 when everything that decides who may connect, where \
        connections go and what servers receive was carried over; 3 when something of that was \
        not (the config is printed all the same, and each loss is a \"not translated\" comment \
        and a warning), unless --allow-lossy is given; 1 when the nginx config cannot be read."
    )]
    ImportNginx {
        /// The nginx config, usually /etc/nginx/nginx.conf.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Exit 0 even when the import is lossy (see the "not translated" comments).
        #[arg(long)]
        allow_lossy: bool,
    },
    /// Print the RFC 7638 thumbprint of an ACME account key: the value for
    /// `acme_thumbprint`, with which sniroute answers HTTP-01 challenges for
    /// that account.
    #[command(
        after_help = "FILE is a JWK (JSON, e.g. certbot's private_key.json), a PEM private key \
        (RSA as PKCS#1 or PKCS#8; EC P-256 or P-384 as SEC1 or PKCS#8; e.g. acme.sh's or lego's \
        account key) or Traefik's acme.json. The thumbprint is printed alone on one line. \
        Exit status: 0 when printed, 1 when FILE cannot be read or holds no such key."
    )]
    AcmeThumbprint {
        /// The account key file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// In a Traefik acme.json: the certificate resolver whose account to use
        /// (default: the first in the file).
        #[arg(long, value_name = "NAME")]
        resolver: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    // Log lines still queued for the writer thread go out before anything else.
    logging::flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sniroute: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Command::ImportNginx { file, allow_lossy }) = &cli.command {
        return import_nginx(file, *allow_lossy);
    }
    if let Some(Command::AcmeThumbprint { file, resolver }) = &cli.command {
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read the account key {}", file.display()))?;
        let thumbprint = acme::thumbprint(&bytes, resolver.as_deref())
            .with_context(|| file.display().to_string())?;
        print(&format!("{thumbprint}\n"));
        return Ok(ExitCode::SUCCESS);
    }
    let text = config::read(&cli.config)?;
    let config = config::parse(&text, &cli.config)?;
    if cli.check {
        for warning in &config.warnings {
            eprintln!("sniroute: warning: {warning}");
        }
        print(&explain::summary(
            &config,
            &cli.config.display().to_string(),
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(host) = &cli.explain {
        let out = explain::explain(&config, host, cli.listener)
            .with_context(|| cli.config.display().to_string())?;
        print(&out);
        return Ok(ExitCode::SUCCESS);
    }
    logging::init(&config.log).context("cannot start the log writer thread")?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = server::Options {
        path: cli.config,
        text,
        watch: !cli.no_watch,
        invocation: upgrade::Invocation::current()
            .map_err(|e| {
                tracing::warn!(
                    "cannot find the running binary's path; SIGUSR2 will not upgrade: {e}"
                )
            })
            .ok(),
    };
    let registry = Arc::new(Registry::default());
    runtime.block_on(server::run(config, registry, options))?;
    // Connections still open after the drain are cut here, not awaited.
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

fn import_nginx(file: &std::path::Path, allow_lossy: bool) -> anyhow::Result<ExitCode> {
    let imported = import::nginx_file(file)?;
    print(&imported.toml);
    for warning in &imported.warnings {
        eprintln!("sniroute: warning: {warning}");
    }
    eprintln!(
        "sniroute: translated {} listener(s) and {} upstream(s) from {}; {} thing(s) not translated, {} not needed (see the comments). Check the result with: sniroute --config FILE --check",
        imported.listeners,
        imported.upstreams,
        file.display(),
        imported.lossy,
        imported.warnings.len() - imported.lossy,
    );
    if imported.lossy > 0 && !allow_lossy {
        eprintln!(
            "sniroute: the import is lossy: what is not translated decides who may connect, where connections go or what servers receive; read those comments, then accept with --allow-lossy (exit status {EXIT_LOSSY})"
        );
        return Ok(ExitCode::from(EXIT_LOSSY));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`sniroute -t | head`) is not an error.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
