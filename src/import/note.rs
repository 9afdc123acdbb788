//! What the importer tells the reader, and how much each thing matters.
//!
//! Every note becomes a comment in the output, next to what it is about. Notes
//! about nginx directives that were not carried over are also warnings on
//! stderr, one line each, and their severity decides the exit status of
//! `import-nginx`: a [`Severity::Lossy`] note means the imported config would
//! treat some connection differently from nginx (refuse it, admit it, send it
//! elsewhere or send its server other bytes), so switching over on it is a
//! decision the operator must make (`--allow-lossy`), not a default.

use super::tree::Directive;

/// How much a note matters for the switch-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something nginx did is not (exactly) in the output, and it decides who may
    /// connect, which pool a connection reaches (or whether it is served at
    /// all), or what bytes a server receives. The text starts with
    /// `not translated`.
    Lossy,
    /// Left out without changing any of that: nginx's own process, logging,
    /// buffers and tuning, or what sniroute always does anyway. The text starts
    /// with `not needed`.
    NotNeeded,
    /// Explains how something was translated; nothing is left out.
    Info,
}

/// One note: a comment in the output, and for dropped directives a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    pub text: String,
}

impl Note {
    /// `not translated: <directive> (file:line): why`.
    pub fn lossy(d: &Directive, why: &str) -> Note {
        Note::about(Severity::Lossy, "not translated", d, why)
    }

    /// `not needed: <directive> (file:line): why`.
    pub fn not_needed(d: &Directive, why: &str) -> Note {
        Note::about(Severity::NotNeeded, "not needed", d, why)
    }

    /// A lossy note not about one directive; `text` names the lines itself.
    pub fn lossy_text(text: impl Into<String>) -> Note {
        Note {
            severity: Severity::Lossy,
            text: text.into(),
        }
    }

    pub fn info(text: impl Into<String>) -> Note {
        Note {
            severity: Severity::Info,
            text: text.into(),
        }
    }

    fn about(severity: Severity, label: &str, d: &Directive, why: &str) -> Note {
        let what = match d.block {
            Some(_) => format!("{} {{…}}", d.text()),
            None => d.text(),
        };
        let text = if why.is_empty() {
            format!("{label}: {what} ({})", d.at)
        } else {
            format!("{label}: {what} ({}): {why}", d.at)
        };
        Note { severity, text }
    }

    /// The note as one line for stderr; `None` for an explanation.
    pub fn warning(&self) -> Option<String> {
        (self.severity != Severity::Info)
            .then(|| self.text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// Where a run of directives is: `file:line`, `file:first-last`, or every
/// place when they span files.
pub fn span(ds: &[&Directive]) -> String {
    let (Some(first), Some(last)) = (ds.first(), ds.last()) else {
        return String::new();
    };
    if ds.iter().any(|d| d.at.file != first.at.file) {
        let all: Vec<String> = ds.iter().map(|d| d.at.to_string()).collect();
        return all.join(", ");
    }
    if first.at.line == last.at.line {
        first.at.to_string()
    } else {
        format!("{}-{}", first.at, last.at.line)
    }
}
