//! nginx config files → a tree of directives, `include` expanded in place.
//!
//! Every directive keeps the file and line it came from, so that anything the
//! importer cannot translate can be named as `file:line`. `include` is expanded
//! wherever it appears (nginx allows it in any block, maps included): a relative
//! path is relative to the directory of the main file (nginx's conf prefix), a
//! pattern with `*`, `?` or `[` is a glob whose matches are read in name order,
//! and a pattern that matches nothing is not an error (as in nginx), while a
//! missing plain file is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lexer::{tokenize, Token, TokenKind};

/// Where a directive was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One directive: `name args… ;` or `name args… { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    pub at: Location,
}

impl Directive {
    /// The directive as written, without its block: `server 10.0.0.1:443 weight=2`.
    pub fn text(&self) -> String {
        std::iter::once(self.name.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why the nginx config cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: Arc<str>,
        line: usize,
        message: String,
    },
    #[error("{at}: include `{pattern}` is not a valid pattern: {error}")]
    Pattern {
        at: Location,
        pattern: String,
        error: String,
    },
    #[error("{at}: includes nest deeper than {MAX_DEPTH} files; is a file including itself?")]
    TooDeep { at: Location },
}

/// Files including files deeper than this are a loop, not a config.
const MAX_DEPTH: usize = 16;

/// Reads the config at `path` and every file it includes.
pub fn load(path: &Path) -> Result<Vec<Directive>, TreeError> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let loader = Loader { base };
    loader.file(path, 0)
}

/// Parses config `text` as if read from `file`; relative includes resolve
/// against `base`.
#[cfg(test)]
pub fn parse_str(text: &str, file: &str, base: &Path) -> Result<Vec<Directive>, TreeError> {
    let loader = Loader {
        base: base.to_owned(),
    };
    loader.text(text, Arc::from(file), 0)
}

struct Loader {
    /// Directory relative includes are resolved against.
    base: PathBuf,
}

impl Loader {
    fn file(&self, path: &Path, depth: usize) -> Result<Vec<Directive>, TreeError> {
        let text = std::fs::read_to_string(path).map_err(|error| TreeError::Read {
            path: path.display().to_string(),
            error,
        })?;
        self.text(&text, Arc::from(path.display().to_string()), depth)
    }

    fn text(&self, text: &str, file: Arc<str>, depth: usize) -> Result<Vec<Directive>, TreeError> {
        let tokens = tokenize(text).map_err(|e| TreeError::Syntax {
            file: Arc::clone(&file),
            line: e.line,
            message: e.message,
        })?;
        let mut parser = Parser {
            tokens: tokens.into_iter().peekable(),
            file,
            last_line: 1,
        };
        let directives = parser.block(false)?;
        self.expand(directives, depth)
    }

    /// Replaces every `include` (at any depth) by the directives of its files.
    fn expand(
        &self,
        directives: Vec<Directive>,
        depth: usize,
    ) -> Result<Vec<Directive>, TreeError> {
        let mut out = Vec::with_capacity(directives.len());
        for mut d in directives {
            if d.name == "include" && d.block.is_none() {
                if depth >= MAX_DEPTH {
                    return Err(TreeError::TooDeep { at: d.at });
                }
                let [pattern] = d.args.as_slice() else {
                    return Err(TreeError::Syntax {
                        file: d.at.file,
                        line: d.at.line,
                        message: "`include` takes exactly one file or pattern".into(),
                    });
                };
                for path in self.matches(pattern, &d.at)? {
                    out.extend(self.file(&path, depth + 1)?);
                }
                continue;
            }
            if let Some(block) = d.block.take() {
                d.block = Some(self.expand(block, depth)?);
            }
            out.push(d);
        }
        Ok(out)
    }

    fn matches(&self, pattern: &str, at: &Location) -> Result<Vec<PathBuf>, TreeError> {
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            self.base.join(pattern)
        };
        if !pattern.contains(['*', '?', '[']) {
            return Ok(vec![full]);
        }
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            // As glob(3), which nginx uses: `*` does not match a leading dot.
            require_literal_leading_dot: true,
        };
        let pattern_error = |error: String| TreeError::Pattern {
            at: at.clone(),
            pattern: pattern.to_owned(),
            error,
        };
        let mut paths = Vec::new();
        for entry in glob::glob_with(&full.to_string_lossy(), options)
            .map_err(|e| pattern_error(e.to_string()))?
        {
            paths.push(entry.map_err(|e| pattern_error(e.to_string()))?);
        }
        paths.sort();
        Ok(paths)
    }
}

struct Parser {
    tokens: std::iter::Peekable<std::vec::IntoIter<Token>>,
    file: Arc<str>,
    last_line: usize,
}

impl Parser {
    fn error(&self, line: usize, message: impl Into<String>) -> TreeError {
        TreeError::Syntax {
            file: Arc::clone(&self.file),
            line,
            message: message.into(),
        }
    }

    /// Directives up to the end of the file (`nested == false`) or the `}`
    /// closing the current block.
    fn block(&mut self, nested: bool) -> Result<Vec<Directive>, TreeError> {
        let mut directives = Vec::new();
        loop {
            let Some(token) = self.tokens.next() else {
                if nested {
                    return Err(
                        self.error(self.last_line, "unexpected end of file: a `}` is missing")
                    );
                }
                return Ok(directives);
            };
            self.last_line = token.line;
            let name = match token.kind {
                TokenKind::Close if nested => return Ok(directives),
                TokenKind::Close => return Err(self.error(token.line, "unexpected `}`")),
                TokenKind::Semicolon => return Err(self.error(token.line, "unexpected `;`")),
                TokenKind::Open => return Err(self.error(token.line, "unexpected `{`")),
                TokenKind::Word(name) => name,
            };
            let at = Location {
                file: Arc::clone(&self.file),
                line: token.line,
            };
            let mut args = Vec::new();
            let block = loop {
                let Some(token) = self.tokens.next() else {
                    return Err(self.error(
                        self.last_line,
                        format!("unexpected end of file: `{name}` needs a `;` or a block"),
                    ));
                };
                self.last_line = token.line;
                match token.kind {
                    TokenKind::Word(w) => args.push(w),
                    TokenKind::Semicolon => break None,
                    TokenKind::Open => break Some(self.block(true)?),
                    TokenKind::Close => {
                        return Err(self
                            .error(token.line, format!("unexpected `}}`: `{name}` needs a `;`")))
                    }
                }
            };
            directives.push(Directive {
                name,
                args,
                block,
                at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Directive> {
        parse_str(text, "nginx.conf", Path::new(".")).unwrap()
    }

    #[test]
    fn nests_blocks_and_records_lines() {
        let tree = parse(
            "events {}\nstream {\n  upstream a {\n    server 127.0.0.1:1 weight=2;\n  }\n}\n",
        );
        assert_eq!(tree.len(), 2);
        let stream = &tree[1];
        assert_eq!(stream.name, "stream");
        assert_eq!(stream.at.line, 2);
        let upstream = &stream.block.as_ref().unwrap()[0];
        assert_eq!(upstream.args, ["a"]);
        let server = &upstream.block.as_ref().unwrap()[0];
        assert_eq!(server.text(), "server 127.0.0.1:1 weight=2");
        assert_eq!(server.at.to_string(), "nginx.conf:4");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = |text: &str| {
            parse_str(text, "x.conf", Path::new("."))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("stream {\n listen 1;\n"),
            "x.conf:2: unexpected end of file: a `}` is missing"
        );
        assert_eq!(err("a;\n}\n"), "x.conf:2: unexpected `}`");
        assert_eq!(
            err("a b\n"),
            "x.conf:1: unexpected end of file: `a` needs a `;` or a block"
        );
        assert_eq!(
            err("s { a b }"),
            "x.conf:1: unexpected `}`: `a` needs a `;`"
        );
        assert_eq!(err(";"), "x.conf:1: unexpected `;`");
    }

    #[test]
    fn includes_expand_in_place_with_their_own_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/b.conf"),
            "\nupstream b { server 10.0.0.2:1; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/a.conf"),
            "upstream a { include servers; }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("conf.d/.hidden.conf"), "broken {").unwrap();
        std::fs::write(dir.path().join("servers"), "server 10.0.0.1:1;\n").unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "stream {\n include conf.d/*.conf;\n include none.d/*.conf;\n}\n",
        )
        .unwrap();
        let tree = load(&dir.path().join("nginx.conf")).unwrap();
        let stream = tree[0].block.as_ref().unwrap();
        let names: Vec<String> = stream.iter().map(|d| d.text()).collect();
        assert_eq!(names, ["upstream a", "upstream b"]);
        // `servers` is relative to the main file's directory, as in nginx, not to
        // the including file's: there is no conf.d/servers.
        let server = &stream[0].block.as_ref().unwrap()[0];
        assert_eq!(server.text(), "server 10.0.0.1:1");
        assert!(server.at.file.ends_with("servers"), "{}", server.at);
        assert_eq!(stream[1].at.line, 2);
        assert!(
            stream[1].at.file.ends_with("conf.d/b.conf"),
            "{}",
            stream[1].at
        );
    }

    #[test]
    fn a_missing_plain_include_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "stream { include missing.conf; }",
        )
        .unwrap();
        let err = load(&dir.path().join("nginx.conf"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read "), "{err}");
        assert!(err.contains("missing.conf"), "{err}");
    }

    #[test]
    fn an_include_loop_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nginx.conf"), "include nginx.conf;").unwrap();
        let err = load(&dir.path().join("nginx.conf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nest deeper than 16 files"), "{err}");
    }
}
