//! `sniroute import-nginx FILE`: an nginx `stream {}` config → sniroute TOML.
//!
//! Four steps, one module each: [`lexer`] splits the text as nginx does,
//! [`tree`] builds the directive tree and expands `include`, [`translate`]
//! decides what every stream directive becomes (and writes a [`note`] for what
//! has no counterpart), [`emit`] prints the result. The output is meant to be
//! read: every value says which nginx directive it came from, and everything
//! left out is named with its `file:line`, in a comment and in a warning.
//!
//! A note is lossy when what was left out decides who may connect, which pool
//! a connection reaches (or whether it is served at all), or what bytes a
//! server receives; the command then exits with a status of its own unless
//! told that this is accepted. Everything else left out is "not needed".
//!
//! The parser is our own. The nginx grammar is five kinds of token, and of the
//! crates that parse it, one knows only `http {}` directives and rejects the
//! rest, and the others build full syntax trees for linters; neither keeps the
//! file and line of each directive across `include`s, which every note needs.

mod emit;
mod lexer;
mod note;
mod translate;
mod tree;
mod units;

use std::path::Path;

pub use translate::TranslateError;
pub use tree::TreeError;

/// A translated config.
#[derive(Debug)]
pub struct Imported {
    /// The sniroute config file text.
    pub toml: String,
    pub listeners: usize,
    pub upstreams: usize,
    /// One line per thing not carried over (each also has a comment), for
    /// stderr, in the order of the output.
    pub warnings: Vec<String>,
    /// How many of the warnings are lossy.
    pub lossy: usize,
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Read(#[from] TreeError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// Reads the nginx config at `path` (and its includes) and translates its
/// `stream {}` block.
pub fn nginx_file(path: &Path) -> Result<Imported, ImportError> {
    let tree = tree::load(path)?;
    let plan = translate::translate(&path.display().to_string(), &tree)?;
    Ok(imported(&plan))
}

fn imported(plan: &emit::Plan) -> Imported {
    let warnings = plan.warnings();
    Imported {
        toml: plan.render(),
        listeners: plan.listeners.iter().filter(|l| !l.disabled).count(),
        upstreams: plan.upstreams.len(),
        lossy: warnings.iter().filter(|(_, lossy)| *lossy).count(),
        warnings: warnings.into_iter().map(|(line, _)| line).collect(),
    }
}

#[cfg(test)]
mod tests;
