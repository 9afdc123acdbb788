//! The translated config ([`Plan`]) → sniroute TOML text with its comments.
//!
//! The plan is already decided (every value valid for sniroute, every note
//! written); this module only lays it out: header, `[timeouts]`, `[limits]`,
//! listeners, upstreams, each preceded by its notes, and each value followed by
//! the nginx directive it came from. Strings are quoted here and nowhere else.

use std::fmt::Write as _;

use super::note::{Note, Severity};

/// Everything the importer decided, ready to print.
#[derive(Debug, Default)]
pub struct Plan {
    /// The nginx file the plan was made from, as the user named it.
    pub source: String,
    /// Notes about nginx directives outside any listener or upstream.
    pub notes: Vec<Note>,
    pub timeouts: Vec<Setting>,
    pub limits: Vec<Setting>,
    pub listeners: Vec<ListenerPlan>,
    pub upstreams: Vec<PoolPlan>,
}

/// `key = value  # comment`; `value` is already TOML.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
    pub comment: String,
}

#[derive(Debug, Default, Clone)]
pub struct ListenerPlan {
    /// The nginx block it comes from: `server {} at nginx.conf:12`.
    pub origin: String,
    pub notes: Vec<Note>,
    /// Emitted commented out: nginx's server could not be translated into a
    /// listener sniroute would accept.
    pub disabled: bool,
    pub binds: Vec<String>,
    pub protocol: &'static str,
    pub protocol_comment: String,
    pub default: Option<(String, String)>,
    /// The other listener keys (access control, PROXY header), in this order.
    pub settings: Vec<Setting>,
    pub routes: Vec<RoutePlan>,
    /// Where `proxy_protocol on` applied to this nginx server: its pools send
    /// the header. Decided after all listeners are known, not printed here.
    pub sends_proxy_protocol: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RoutePlan {
    pub pattern: String,
    pub pool: String,
    pub comment: String,
}

#[derive(Debug, Clone)]
pub struct PoolPlan {
    pub name: String,
    pub origin: String,
    pub notes: Vec<Note>,
    pub servers: Vec<ServerPlan>,
    pub balance: &'static str,
    pub balance_comment: String,
    pub max_fails: u32,
    pub fail_timeout: String,
    /// `proxy_protocol = "v1"`, with where nginx had it.
    pub proxy_protocol: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerPlan {
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
}

impl Plan {
    /// Every note, wherever it is attached.
    pub fn all_notes(&self) -> impl Iterator<Item = &Note> {
        self.notes
            .iter()
            .chain(self.listeners.iter().flat_map(|l| l.notes.iter()))
            .chain(self.upstreams.iter().flat_map(|u| u.notes.iter()))
    }

    /// One line for stderr per note about something left out, and whether it
    /// is lossy. Each once: a map used by two listeners has its lost entries
    /// noted at both.
    pub fn warnings(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = Vec::new();
        for note in self.all_notes() {
            if let Some(line) = note.warning() {
                if !out.iter().any(|(l, _)| *l == line) {
                    out.push((line, note.severity == Severity::Lossy));
                }
            }
        }
        out
    }

    /// The config file text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# sniroute config translated from the nginx config {} by `sniroute import-nginx`.",
            self.source
        );
        out.push_str(
            "# Read every comment, then check the file before you use it:\n\
             #     sniroute --config FILE --check\n\
             # A \"not translated\" comment names an nginx directive (file:line) that this\n\
             # file does not carry over (or not exactly) although it decides who may connect,\n\
             # where connections go or what servers receive: decide for each what you need.\n\
             # \"not needed\" comments name directives that change none of that.\n",
        );
        let lossy = self.warnings().iter().filter(|(_, lossy)| *lossy).count();
        if lossy > 0 {
            let _ = writeln!(
                out,
                "# This import is lossy: {lossy} \"not translated\" comment(s)."
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            notes(&mut out, &self.notes, "");
        }
        for (table, settings) in [("timeouts", &self.timeouts), ("limits", &self.limits)] {
            if settings.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n[{table}]");
            let lines: Vec<(String, &str)> = settings
                .iter()
                .map(|s| (format!("{} = {}", s.key, s.value), s.comment.as_str()))
                .collect();
            aligned(&mut out, &lines, "");
        }
        for listener in &self.listeners {
            out.push('\n');
            self.listener(&mut out, listener);
        }
        for pool in &self.upstreams {
            out.push('\n');
            pool_text(&mut out, pool);
        }
        out
    }

    fn listener(&self, out: &mut String, l: &ListenerPlan) {
        let _ = writeln!(out, "# from {}", l.origin);
        notes(out, &l.notes, "");
        let prefix = if l.disabled { "# " } else { "" };
        let mut lines = vec![
            (format!("bind = {}", list(&l.binds)), String::new()),
            (
                format!("protocol = {}", quote(l.protocol)),
                l.protocol_comment.clone(),
            ),
        ];
        if let Some((pool, comment)) = &l.default {
            lines.push((format!("default = {}", quote(pool)), comment.clone()));
        }
        for s in &l.settings {
            lines.push((format!("{} = {}", s.key, s.value), s.comment.clone()));
        }
        let _ = writeln!(out, "{prefix}[[listeners]]");
        aligned(
            out,
            &lines
                .iter()
                .map(|(a, b)| (a.clone(), b.as_str()))
                .collect::<Vec<_>>(),
            prefix,
        );
        if !l.routes.is_empty() {
            let _ = writeln!(out, "{prefix}[listeners.routes]");
            let lines: Vec<(String, &str)> = l
                .routes
                .iter()
                .map(|r| {
                    (
                        format!("{} = {}", quote(&r.pattern), quote(&r.pool)),
                        r.comment.as_str(),
                    )
                })
                .collect();
            aligned(out, &lines, prefix);
        }
    }
}

fn pool_text(out: &mut String, p: &PoolPlan) {
    let _ = writeln!(out, "# from {}", p.origin);
    notes(out, &p.notes, "");
    let _ = writeln!(out, "[upstreams.{}]", key(&p.name));
    out.push_str("servers = [\n");
    for s in &p.servers {
        let line = match (s.weight, s.backup) {
            (1, false) => quote(&s.addr),
            (w, false) => format!("{{ addr = {}, weight = {w} }}", quote(&s.addr)),
            (1, true) => format!("{{ addr = {}, backup = true }}", quote(&s.addr)),
            (w, true) => format!(
                "{{ addr = {}, weight = {w}, backup = true }}",
                quote(&s.addr)
            ),
        };
        let _ = writeln!(out, "  {line},");
    }
    out.push_str("]\n");
    let mut lines = vec![
        (
            format!("balance = {}", quote(p.balance)),
            p.balance_comment.as_str(),
        ),
        (format!("max_fails = {}", p.max_fails), ""),
        (format!("fail_timeout = {}", quote(&p.fail_timeout)), ""),
    ];
    if let Some(from) = &p.proxy_protocol {
        lines.push(("proxy_protocol = \"v1\"".to_owned(), from.as_str()));
    }
    aligned(out, &lines, "");
}

fn notes(out: &mut String, notes: &[Note], prefix: &str) {
    for note in notes {
        for line in note.text.lines() {
            let _ = writeln!(out, "{prefix}# {line}");
        }
    }
}

/// `code  # comment` lines with the comments in one column.
fn aligned(out: &mut String, lines: &[(String, &str)], prefix: &str) {
    let width = lines
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(code, _)| code.len())
        .max()
        .unwrap_or(0);
    for (code, comment) in lines {
        if comment.is_empty() {
            let _ = writeln!(out, "{prefix}{code}");
        } else {
            let _ = writeln!(out, "{prefix}{code:width$}  # {comment}");
        }
    }
}

/// A TOML array of strings.
pub fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML string. Literal (`'…'`) when that needs no escape and the text has a
/// backslash, so regexes read as they do in nginx; basic (`"…"`) otherwise.
pub fn quote(s: &str) -> String {
    let plain = !s.chars().any(|c| c == '\'' || c.is_control());
    if s.contains('\\') && plain {
        return format!("'{s}'");
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A TOML key: bare when it can be, quoted otherwise.
pub fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        s.to_owned()
    } else {
        quote(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(s: &str) -> String {
        let doc = format!("k = {}", quote(s));
        let value: toml::Table = toml::from_str(&doc).unwrap();
        value["k"].as_str().unwrap().to_owned()
    }

    #[test]
    fn quoted_strings_read_back_unchanged() {
        for s in [
            "plain",
            r"~^argo-[a-z]+\.example\.com$",
            r#"with "quotes" and \ backslash"#,
            "it's\\",
            "tab\tnew\nline\u{1}",
        ] {
            assert_eq!(roundtrip(s), s);
        }
        assert_eq!(quote(r"~^a\.b$"), r"'~^a\.b$'");
        assert_eq!(quote("a.example.com"), "\"a.example.com\"");
    }

    #[test]
    fn keys_are_bare_only_when_toml_allows() {
        assert_eq!(key("rke2_https-a"), "rke2_https-a");
        assert_eq!(key("10.0.0.1:443"), "\"10.0.0.1:443\"");
        assert_eq!(key(""), "\"\"");
    }

    #[test]
    fn renders_a_disabled_listener_as_comments_only() {
        let plan = Plan {
            source: "nginx.conf".into(),
            listeners: vec![ListenerPlan {
                origin: "server {} at nginx.conf:3".into(),
                notes: vec![Note::lossy_text(
                    "not translated: proxy_pass $x:443 (nginx.conf:5)",
                )],
                disabled: true,
                binds: vec!["0.0.0.0:443".into()],
                protocol: "tls",
                protocol_comment: "ssl_preread on".into(),
                ..ListenerPlan::default()
            }],
            ..Plan::default()
        };
        let text = plan.render();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert!(table.is_empty(), "{text}");
        assert!(text.contains("# [[listeners]]\n# bind = [\"0.0.0.0:443\"]\n# protocol = \"tls\"  # ssl_preread on\n"), "{text}");
    }
}
