//! Live reload: SIGHUP or a change of the config file → validate → swap.
//!
//! The new file is read, parsed, validated and resolved completely (off the async
//! threads: DNS is blocking) before anything changes. New bind addresses are bound
//! next; only then is the config swapped in whole, through the `ArcSwap` that
//! every new connection loads from, and listeners that left are closed. Any
//! failure before the swap leaves everything as it was. Open connections keep the
//! snapshot they started with; servers that stay in their pool keep their live
//! state (see [`config::parse_with`]).
//!
//! The file watcher watches the file's directory, not the file: editors replace
//! the file by renaming a temporary over it, and Kubernetes swaps a `..data`
//! symlink, and a watch on the old inode would go silent after either.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::{self, Config, ConfigError};
use crate::handover::Inherited;
use crate::listener::{BindError, Listeners};
use crate::metrics::Metrics;
use crate::pool::Registry;
use crate::relay::Engine;
use crate::resources;
use crate::systemd;

/// Why a reload did not happen; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always reload (names are resolved again, too).
    Signal,
    /// The watcher saw the file change: reload only if its text differs.
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file_change",
        }
    }
}

/// Applies new configs to the running process.
pub struct Reloader {
    path: PathBuf,
    current: Arc<ArcSwap<Config>>,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// The text of the last file read, good or bad, so that a burst of events for
    /// one edit reloads once.
    last_text: String,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        current: Arc<ArcSwap<Config>>,
        listeners: Listeners,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        text: String,
    ) -> Reloader {
        Reloader {
            path,
            current,
            listeners,
            metrics,
            registry,
            last_text: text,
        }
    }

    /// Reloads and logs the outcome; never fails the process.
    pub async fn reload(&mut self, trigger: Trigger) {
        let text = read(&self.path).await;
        if let Ok(text) = &text {
            if trigger == Trigger::FileChange && *text == self.last_text {
                tracing::debug!("config file touched but unchanged; not reloading");
                return;
            }
            self.last_text.clone_from(text);
        }
        systemd::reloading();
        let started = Instant::now();
        let result = match text {
            Ok(text) => self.apply(text).await,
            Err(e) => Err(e.into()),
        };
        self.metrics.reloaded(result.is_ok());
        match result {
            Ok(diff) => tracing::info!(
                trigger = %trigger.as_str(),
                took_ms = started.elapsed().as_millis() as u64,
                "config reloaded: {diff}"
            ),
            Err(e) => tracing::error!(
                trigger = %trigger.as_str(),
                "config reload failed, keeping the running config: {e}"
            ),
        }
        systemd::ready();
    }

    /// The running listeners, for an upgrade or systemd's fd store to take.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Closes every listening socket; called once the drain has begun, which
    /// stops the accept loops.
    pub fn stop_listening(&mut self) {
        self.listeners.close_all();
    }

    async fn apply(&mut self, text: String) -> Result<Diff, ReloadError> {
        let previous = self.current.load_full();
        let path = self.path.clone();
        let prev = Arc::clone(&previous);
        let registry = Arc::clone(&self.registry);
        let config = tokio::task::spawn_blocking(move || {
            config::parse_with(&text, &path, Some(&prev), &registry)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let bound = self
            .listeners
            .bind_missing(&config, &mut Inherited::default())?;
        if config.log != previous.log {
            tracing::warn!("[log] changes take effect at the next restart");
        }
        if config.metrics != previous.metrics {
            tracing::warn!("[metrics] changes take effect at the next restart");
        }
        if config.limits.max_connections != previous.limits.max_connections {
            resources::check_descriptor_budget(
                config.limits.max_connections,
                Engine::detect().descriptors_per_connection(),
            );
        }
        let diff = Diff::between(&previous, &config);
        let config = Arc::new(config);
        self.current.store(Arc::clone(&config));
        self.registry.commit(&config.pools);
        self.listeners.start(bound);
        self.listeners.stop_removed(&self.current.load());
        self.listeners.tune(&self.current.load());
        Ok(diff)
    }
}

async fn read(path: &Path) -> Result<String, ConfigError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || config::read(&path))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A running file watcher; dropping it stops watching.
pub struct Watcher {
    _watcher: RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<()>,
}

/// Bursts of file events closer together than this count as one change.
const DEBOUNCE: Duration = Duration::from_millis(250);

impl Watcher {
    /// Watches the directory of `path` for changes to `path` (or to the `..data`
    /// style entries of a Kubernetes ConfigMap volume).
    pub fn new(path: &Path) -> notify::Result<Watcher> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(ToOwned::to_owned);
        let (tx, changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |result: notify::Result<Event>| match result {
                Ok(event) if is_change(&event.kind) => {
                    let relevant = event.paths.iter().any(|path| {
                        let file = path.file_name();
                        file == name.as_deref()
                            || file
                                .and_then(|f| f.to_str())
                                .is_some_and(|f| f.starts_with(".."))
                    });
                    if relevant {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("config file watcher: {e}"),
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        tracing::info!(dir = %dir.display(), "watching the config file for changes");
        Ok(Watcher {
            _watcher: watcher,
            changes,
        })
    }

    /// The next change, once the file has been quiet for [`DEBOUNCE`]: an
    /// editor's save or a ConfigMap's symlink swap is a burst of events, and one
    /// reload. Never resolves once the watcher thread is gone.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, self.changes.recv()).await {}
    }
}

/// Whether an event can mean new contents. Opening and reading the file are
/// not: a reload reads it, and counting that would make every reload start the
/// next, a re-read every [`DEBOUNCE`] for good.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// What a reload changed, for the log line: every section of the file.
#[derive(Debug, Default)]
pub struct Diff {
    settings: Changes,
    listeners: Changes,
    pools: Changes,
    routes: Changes,
}

#[derive(Debug, Default)]
struct Changes {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

impl Changes {
    fn between(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Changes {
        let mut c = Changes::default();
        for (key, value) in new {
            match old.get(key) {
                None => c.added.push(key.clone()),
                Some(v) if v != value => c.changed.push(key.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        c
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Diff {
    pub fn between(old: &Config, new: &Config) -> Diff {
        Diff {
            settings: Changes::between(&settings(old), &settings(new)),
            listeners: Changes::between(&listeners(old), &listeners(new)),
            pools: Changes::between(&pools(old), &pools(new)),
            routes: Changes::between(&routes(old), &routes(new)),
        }
    }
}

/// `section.key` → value, for the sections outside listeners and upstreams
/// (`[log]` and `[metrics]` are named too, though they apply at the next start).
fn settings(c: &Config) -> BTreeMap<String, String> {
    let t = &c.timeouts;
    let l = &c.limits;
    [
        ("timeouts.peek", format!("{:?}", t.peek)),
        ("timeouts.connect", format!("{:?}", t.connect)),
        ("timeouts.idle", format!("{:?}", t.idle)),
        ("timeouts.shutdown", format!("{:?}", t.shutdown)),
        ("limits.max_connections", l.max_connections.to_string()),
        ("limits.max_peek_bytes", l.max_peek_bytes.to_string()),
        (
            "limits.max_connections_per_ip",
            format!("{:?}", l.max_connections_per_ip),
        ),
        ("log.level", format!("{:?}", c.log.level)),
        ("log.format", format!("{:?}", c.log.format)),
        ("log.access_log", c.log.access_log.to_string()),
        ("metrics.bind", format!("{:?}", c.metrics)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// bind address → protocol, PROXY protocol sources and allow/deny
fn listeners(c: &Config) -> BTreeMap<String, String> {
    c.listeners
        .iter()
        .flat_map(|l| {
            l.binds.iter().map(move |b| {
                (
                    b.to_string(),
                    format!("{} {:?} {:?}", l.protocol.as_str(), l.proxy_from, l.access),
                )
            })
        })
        .collect()
}

/// pool name → everything that defines it
fn pools(c: &Config) -> BTreeMap<String, String> {
    c.pools
        .values()
        .map(|p| (p.name.to_string(), format!("{:?}", p.spec)))
        .collect()
}

/// "bind pattern" → pool name, for every bind of every listener
fn routes(c: &Config) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for l in &c.listeners {
        let routes = l.router.routes_and_default();
        for r in routes {
            for b in &l.binds {
                map.insert(
                    format!("{b} {}", r.pattern),
                    format!("{} {:?}", r.target.pool.name, r.target.access),
                );
            }
        }
    }
    map
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sections = [
            ("settings", &self.settings),
            ("listeners", &self.listeners),
            ("pools", &self.pools),
            ("routes", &self.routes),
        ];
        if sections.iter().all(|(_, c)| c.is_empty()) {
            return f.write_str("no changes");
        }
        let mut first = true;
        for (what, c) in sections {
            for (sign, names) in [("+", &c.added), ("-", &c.removed), ("~", &c.changed)] {
                if names.is_empty() {
                    continue;
                }
                if !first {
                    f.write_str("; ")?;
                }
                first = false;
                const SHOWN: usize = 10;
                let shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
                write!(f, "{what} {sign}{} [{}", names.len(), shown.join(", "))?;
                if names.len() > SHOWN {
                    write!(f, ", …")?;
                }
                f.write_str("]")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        config::parse(text, Path::new("t.toml")).unwrap()
    }

    const BASE: &str = r#"
[[listeners]]
bind = "127.0.0.1:1443"
protocol = "tls"
[listeners.routes]
"a.example.com" = "a"
"b.example.com" = "b"
[upstreams.a]
servers = ["127.0.0.2:443"]
[upstreams.b]
servers = ["127.0.0.3:443"]
"#;

    #[test]
    fn diff_names_what_was_added_removed_and_changed() {
        let old = parse(BASE);
        let text = BASE
            .replace(
                "\"b.example.com\" = \"b\"",
                "\"b.example.com\" = \"a\"\n\"c.example.com\" = \"c\"",
            )
            .replace(
                "[upstreams.b]\nservers = [\"127.0.0.3:443\"]",
                "[upstreams.c]\nservers = [\"127.0.0.4:443\"]",
            )
            .replace("127.0.0.2:443", "127.0.0.5:443")
            + "[[listeners]]\nbind = \"127.0.0.1:1080\"\nprotocol = \"http\"\ndefault = \"a\"\n";
        let new = parse(&text);
        assert_eq!(
            Diff::between(&old, &new).to_string(),
            "listeners +1 [127.0.0.1:1080]; pools +1 [c]; pools -1 [b]; pools ~1 [a]; \
             routes +2 [127.0.0.1:1080 default, 127.0.0.1:1443 c.example.com]; \
             routes ~1 [127.0.0.1:1443 b.example.com]"
        );
        assert_eq!(Diff::between(&old, &parse(BASE)).to_string(), "no changes");
        let proxied = BASE.replace(
            "servers = [\"127.0.0.3:443\"]",
            "servers = [\"127.0.0.3:443\"]\nproxy_protocol = \"v2\"",
        );
        assert_eq!(
            Diff::between(&old, &parse(&proxied)).to_string(),
            "pools ~1 [b]"
        );
    }
}
