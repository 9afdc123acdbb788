//! nginx config text → tokens, as nginx's own `ngx_conf_read_token` splits it.
//!
//! The grammar is small: words separated by whitespace, `;` ending a directive,
//! `{` / `}` around a block, `#` comments from the start of a token to the end
//! of the line, and `"…"` / `'…'` quoted strings. Two details matter for map
//! keys and regexes and are copied from nginx: a `{` right after `$` belongs to
//! the word (`${var}`), and a `}` inside a word does not end it; escapes `\"`,
//! `\'`, `\\`, `\t`, `\r`, `\n` are decoded and every other backslash is kept,
//! so `~^a\.b$` reaches the regex engine unchanged.

/// One token and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// A word or a quoted string, escapes decoded.
    Word(String),
    /// `;`
    Semicolon,
    /// `{`
    Open,
    /// `}`
    Close,
}

/// Text that is not an nginx config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LexError {
    pub line: usize,
    pub message: String,
}

/// Splits `text` into tokens.
pub fn tokenize(text: &str) -> Result<Vec<Token>, LexError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                let kind = match c {
                    ';' => TokenKind::Semicolon,
                    '{' => TokenKind::Open,
                    _ => TokenKind::Close,
                };
                tokens.push(Token { kind, line });
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(LexError {
                                line: start,
                                message: format!("unterminated {c}-quoted string"),
                            })
                        }
                        Some('\\') => match chars.next() {
                            Some(e) => {
                                if e == '\n' {
                                    line += 1;
                                }
                                push_escape(&mut word, e);
                            }
                            None => continue,
                        },
                        Some(q) if q == c => break,
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            word.push(other);
                        }
                    }
                }
                // nginx wants a separator right after the closing quote.
                if chars
                    .peek()
                    .is_some_and(|&n| !(n.is_whitespace() || matches!(n, ';' | '{' | '}')))
                {
                    return Err(LexError {
                        line,
                        message: format!("unexpected character after the quoted string \"{word}\""),
                    });
                }
                tokens.push(Token {
                    kind: TokenKind::Word(word),
                    line: start,
                });
            }
            _ => {
                let mut word = String::new();
                let mut after_dollar = false;
                while let Some(&c) = chars.peek() {
                    if c == '{' && after_dollar {
                        word.push(c);
                        chars.next();
                        after_dollar = false;
                        continue;
                    }
                    if c.is_whitespace() || c == ';' || c == '{' {
                        break;
                    }
                    chars.next();
                    after_dollar = c == '$';
                    if c == '\\' {
                        match chars.next() {
                            Some(e) if e.is_whitespace() || matches!(e, ';' | '{' | '}') => {
                                // An escaped separator is part of the word, backslash and all.
                                word.push('\\');
                                word.push(e);
                            }
                            Some(e) => push_escape(&mut word, e),
                            None => word.push('\\'),
                        }
                        continue;
                    }
                    word.push(c);
                }
                tokens.push(Token {
                    kind: TokenKind::Word(word),
                    line,
                });
            }
        }
    }
    Ok(tokens)
}

/// Appends the escape `\e` the way nginx decodes it when it copies a token.
fn push_escape(word: &mut String, e: char) {
    match e {
        '"' | '\'' | '\\' => word.push(e),
        't' => word.push('\t'),
        'r' => word.push('\r'),
        'n' => word.push('\n'),
        _ => {
            word.push('\\');
            word.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| match t.kind {
                TokenKind::Word(w) => w,
                TokenKind::Semicolon => ";".into(),
                TokenKind::Open => "{".into(),
                TokenKind::Close => "}".into(),
            })
            .collect()
    }

    #[test]
    fn splits_directives_blocks_and_comments() {
        assert_eq!(
            words("stream {\n  # a comment; { }\n  listen 443; }\n"),
            ["stream", "{", "listen", "443", ";", "}"]
        );
    }

    #[test]
    fn counts_lines_of_every_token() {
        let tokens = tokenize("a;\n\n b {\n}\n").unwrap();
        let lines: Vec<usize> = tokens.iter().map(|t| t.line).collect();
        assert_eq!(lines, [1, 1, 3, 3, 4]);
    }

    #[test]
    fn hash_inside_a_word_is_not_a_comment() {
        assert_eq!(words("a#b c;"), ["a#b", "c", ";"]);
    }

    #[test]
    fn quoted_strings_keep_separators_and_decode_escapes() {
        assert_eq!(
            words(r#"map "~^a{3}\.b;c$" 'it\'s' "x\"y\\z";"#),
            ["map", r"~^a{3}\.b;c$", "it's", "x\"y\\z", ";"]
        );
    }

    #[test]
    fn regex_backslashes_survive_in_bare_words() {
        assert_eq!(
            words(r"~^argo-[a-z]+\.example\.com$ b;")[0],
            r"~^argo-[a-z]+\.example\.com$"
        );
    }

    #[test]
    fn dollar_brace_variable_is_one_word_and_close_brace_does_not_end_a_word() {
        assert_eq!(
            words("proxy_pass ${up}:443;"),
            ["proxy_pass", "${up}:443", ";"]
        );
        assert_eq!(words("a b}c;"), ["a", "b}c", ";"]);
    }

    #[test]
    fn an_open_brace_ends_a_bare_word() {
        assert_eq!(
            words("upstream u{server a:1;}"),
            ["upstream", "u", "{", "server", "a:1", ";", "}"]
        );
    }

    #[test]
    fn a_quoted_string_spanning_lines_counts_them() {
        let tokens = tokenize("\"a\nb\" c;").unwrap();
        assert_eq!(tokens[0].kind, TokenKind::Word("a\nb".into()));
        assert_eq!(tokens[0].line, 1);
        assert_eq!(tokens[1].line, 2);
    }

    #[test]
    fn unterminated_quote_is_an_error_with_its_line() {
        assert_eq!(
            tokenize("a;\nb \"c;\n").unwrap_err(),
            LexError {
                line: 2,
                message: "unterminated \"-quoted string".into()
            }
        );
    }

    #[test]
    fn text_glued_to_a_closing_quote_is_an_error() {
        let err = tokenize("a \"b\"c;").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("after the quoted string"), "{err}");
    }
}
