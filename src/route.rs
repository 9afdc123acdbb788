//! Hostname → pool.
//!
//! Order, as README.md documents it ("Routing"): exact name, then the longest `*.suffix` wildcard, then
//! `~regex` routes in file order, then the listener's default. Exact names and
//! wildcard suffixes live in hash maps, so a lookup costs one probe per label of
//! the client's name whatever the number of routes; the regexes are one
//! [`RegexSet`] whose lowest matching index is the first in file order.

use std::collections::HashMap;
use std::sync::Arc;

use regex::RegexSet;

use crate::name::HostName;

/// The pattern label of a listener's `default` route.
pub const DEFAULT_ROUTE: &str = "default";

/// A matched route: the config key that matched (kept for logs and metric labels,
/// whose cardinality must be bounded by the config, never by clients) and its target.
#[derive(Debug)]
pub struct Route<T> {
    pub pattern: Arc<str>,
    pub target: T,
}

/// The immutable routing table of one listener.
#[derive(Debug)]
pub struct Router<T> {
    exact: HashMap<Box<str>, Route<T>>,
    wildcard: HashMap<Box<str>, Route<T>>,
    regex_set: RegexSet,
    regex_routes: Vec<Route<T>>,
    default: Option<Route<T>>,
}

/// Why a route key is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("`{0}` is not a valid hostname (letters, digits, `-`, `_`, `.`; or `*.suffix`, or `~regex`)")]
    InvalidName(String),
    #[error("invalid regex `{pattern}`: {reason}")]
    InvalidRegex { pattern: String, reason: String },
    #[error("`{0}` is listed twice (names are compared lowercase, without trailing dot)")]
    Duplicate(String),
}

/// Collects routes in file order, then builds a [`Router`].
pub struct RouterBuilder<T> {
    exact: HashMap<Box<str>, Route<T>>,
    wildcard: HashMap<Box<str>, Route<T>>,
    regexes: Vec<String>,
    regex_routes: Vec<Route<T>>,
}

impl<T> Default for RouterBuilder<T> {
    fn default() -> Self {
        RouterBuilder {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            regexes: Vec::new(),
            regex_routes: Vec::new(),
        }
    }
}

impl<T> RouterBuilder<T> {
    /// Adds one route; `pattern` is the config key as written.
    pub fn add(&mut self, pattern: &str, target: T) -> Result<(), PatternError> {
        let route = Route {
            pattern: Arc::from(pattern),
            target,
        };
        if let Some(regex) = pattern.strip_prefix('~') {
            // Compile alone first so the error names this pattern, not the whole set.
            regex::Regex::new(regex).map_err(|e| PatternError::InvalidRegex {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })?;
            self.regexes.push(regex.to_owned());
            self.regex_routes.push(route);
            return Ok(());
        }
        let (map, name) = match pattern.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, pattern),
        };
        let name = HostName::parse(name.as_bytes())
            .filter(|n| !n.as_str().starts_with('['))
            .ok_or_else(|| PatternError::InvalidName(pattern.to_owned()))?;
        match map.entry(name.as_str().into()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(PatternError::Duplicate(pattern.to_owned()))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(route);
                Ok(())
            }
        }
    }

    pub fn build(self, default: Option<T>) -> Router<T> {
        Router {
            exact: self.exact,
            wildcard: self.wildcard,
            // Each regex compiled on its own in `add`, so the set compiles too.
            regex_set: RegexSet::new(&self.regexes).unwrap_or_else(|_| RegexSet::empty()),
            regex_routes: self.regex_routes,
            default: default.map(|target| Route {
                pattern: Arc::from(DEFAULT_ROUTE),
                target,
            }),
        }
    }
}

impl<T> Router<T> {
    /// The route for `name` (`None`: the client sent no usable name).
    pub fn route(&self, name: Option<&HostName>) -> Option<&Route<T>> {
        name.and_then(|name| self.route_name(name))
            .or(self.default.as_ref())
    }

    fn route_name(&self, name: &HostName) -> Option<&Route<T>> {
        if let Some(route) = self.exact.get(name.as_str()) {
            return Some(route);
        }
        if !self.wildcard.is_empty() {
            if let Some(route) = name.parent_suffixes().find_map(|s| self.wildcard.get(s)) {
                return Some(route);
            }
        }
        if self.regex_routes.is_empty() {
            return None;
        }
        let first = self.regex_set.matches(name.as_str()).iter().next()?;
        self.regex_routes.get(first)
    }

    pub fn default_route(&self) -> Option<&Route<T>> {
        self.default.as_ref()
    }

    /// Every route in a stable order: exact (sorted), wildcards (sorted), regexes in file order.
    pub fn routes(&self) -> Vec<&Route<T>> {
        let mut exact: Vec<_> = self.exact.values().collect();
        exact.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        let mut wildcard: Vec<_> = self.wildcard.values().collect();
        wildcard.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        exact
            .into_iter()
            .chain(wildcard)
            .chain(&self.regex_routes)
            .collect()
    }

    /// [`Router::routes`], then the default route if there is one: every key a
    /// connection can be counted under.
    pub fn routes_and_default(&self) -> Vec<&Route<T>> {
        let mut all = self.routes();
        all.extend(self.default_route());
        all
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.exact.len(),
            self.wildcard.len(),
            self.regex_routes.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(
        routes: &[(&str, &'static str)],
        default: Option<&'static str>,
    ) -> Router<&'static str> {
        let mut b = RouterBuilder::default();
        for (pattern, pool) in routes {
            b.add(pattern, *pool).unwrap();
        }
        b.build(default)
    }

    fn lookup(r: &Router<&'static str>, name: &str) -> Option<&'static str> {
        r.route(HostName::parse(name.as_bytes()).as_ref())
            .map(|route| route.target)
    }

    #[test]
    fn exact_beats_wildcard_beats_regex_beats_default() {
        let r = router(
            &[
                ("~^a", "regex"),
                ("*.example.com", "wild"),
                ("api.example.com", "exact"),
                ("~\\.org$", "org"),
            ],
            Some("default"),
        );
        assert_eq!(lookup(&r, "api.example.com"), Some("exact"));
        assert_eq!(lookup(&r, "app.example.com"), Some("wild"));
        assert_eq!(lookup(&r, "abc.net"), Some("regex"));
        assert_eq!(lookup(&r, "x.org"), Some("org"));
        assert_eq!(lookup(&r, "zzz.net"), Some("default"));
        assert_eq!(r.route(None).map(|r| r.target), Some("default"));
    }

    #[test]
    fn wildcard_matches_any_depth_but_not_apex() {
        let r = router(&[("*.apps.example.com", "apps")], None);
        assert_eq!(lookup(&r, "a.apps.example.com"), Some("apps"));
        assert_eq!(lookup(&r, "a.b.c.apps.example.com"), Some("apps"));
        assert_eq!(lookup(&r, "apps.example.com"), None);
        assert_eq!(lookup(&r, "xapps.example.com"), None);
    }

    #[test]
    fn longest_wildcard_wins() {
        let r = router(
            &[("*.example.com", "short"), ("*.apps.example.com", "long")],
            None,
        );
        assert_eq!(lookup(&r, "x.apps.example.com"), Some("long"));
        assert_eq!(lookup(&r, "x.other.example.com"), Some("short"));
    }

    #[test]
    fn regexes_first_match_in_file_order_on_lowercase_names() {
        let r = router(
            &[
                ("~^argo-[a-z]+\\.example\\.com$", "first"),
                ("~argo", "second"),
            ],
            None,
        );
        assert_eq!(lookup(&r, "ARGO-cd.Example.com"), Some("first"));
        assert_eq!(lookup(&r, "argo1.example.com"), Some("second"));
        let r = router(
            &[
                ("~argo", "second"),
                ("~^argo-[a-z]+\\.example\\.com$", "first"),
            ],
            None,
        );
        assert_eq!(lookup(&r, "argo-cd.example.com"), Some("second"));
    }

    #[test]
    fn case_and_trailing_dot_are_ignored_on_both_sides() {
        let r = router(&[("Rancher.Example.com.", "r")], None);
        assert_eq!(lookup(&r, "RANCHER.example.COM."), Some("r"));
    }

    #[test]
    fn no_route_no_default_is_none() {
        let r = router(&[("a.example.com", "a")], None);
        assert_eq!(lookup(&r, "b.example.com"), None);
        assert!(r.route(None).is_none());
    }

    #[test]
    fn bad_patterns_are_named() {
        let mut b = RouterBuilder::default();
        assert_eq!(
            b.add("a b", 1),
            Err(PatternError::InvalidName("a b".into()))
        );
        assert_eq!(b.add("*.", 1), Err(PatternError::InvalidName("*.".into())));
        assert_eq!(
            b.add("a.*.com", 1),
            Err(PatternError::InvalidName("a.*.com".into()))
        );
        assert!(matches!(
            b.add("~(", 1),
            Err(PatternError::InvalidRegex { .. })
        ));
        b.add("a.example.com", 1).unwrap();
        assert_eq!(
            b.add("A.example.com.", 2),
            Err(PatternError::Duplicate("A.example.com.".into()))
        );
        b.add("*.a.example.com", 1).unwrap();
    }

    #[test]
    fn ten_thousand_routes_still_resolve_exactly() {
        let mut b = RouterBuilder::default();
        for i in 0..10_000 {
            b.add(&format!("host{i}.example.com"), i).unwrap();
            b.add(&format!("*.tenant{i}.example.com"), 100_000 + i)
                .unwrap();
        }
        let r = b.build(None);
        let get = |n: &str| {
            r.route(HostName::parse(n.as_bytes()).as_ref())
                .map(|r| r.target)
        };
        assert_eq!(get("host9999.example.com"), Some(9999));
        assert_eq!(get("a.b.tenant42.example.com"), Some(100_042));
        assert_eq!(get("tenant42.example.com"), None);
    }
}
