//! nginx `allow` / `deny` → a listener's `allow` / `deny`.
//!
//! nginx reads its list in order and the first rule that matches the client
//! decides; a client no rule matches is admitted. sniroute admits a client
//! that is in `allow` (or `allow` is empty) and in no `deny`: deny wins,
//! whatever the order. The translation:
//!
//! 1. Rules no client reaches are dropped: those after an `all`, and those
//!    whose addresses earlier rules cover entirely (nginx never gets to them).
//!    `unix:` rules are dropped too: they only see clients on unix sockets,
//!    which sniroute does not listen on.
//! 2. If the list ends in `deny all`, its allows become `allow` and its denies
//!    `deny` (only `deny all` left: everyone is denied). Otherwise its denies
//!    become `deny` and its allows nothing, since everyone not denied is
//!    admitted anyway.
//!
//! The result never admits a client nginx refused: a client in no `deny` has
//! no deny among the rules that matched it in nginx, so its first match was an
//! allow (with a final `deny all`, the allow that put it in `allow` came first)
//! or there was none. It may refuse clients nginx admitted: an allow that came
//! before a broader deny (`allow 10.1.0.0/16; deny 10.0.0.0/8;`) let them
//! through in nginx, while here the deny wins. Whether that happens is not
//! guessed from the shape of the list but checked: both sets of admitted
//! addresses are computed, as ranges, and compared. If they differ, the import
//! is lossy and the note names the addresses nginx admitted and sniroute
//! would not, so that the operator can widen the lists by hand.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Net, Ipv6Subnets};

use super::super::emit::{list, ListenerPlan, Setting};
use super::super::note::{span, Note};
use super::super::tree::Directive;

/// At most this many missing blocks are named in a note.
const NAMED: usize = 8;

/// Translates `rules` (the listener's effective nginx list) into `l`'s
/// `allow` / `deny`, with notes.
pub fn translate(rules: &[&Directive], l: &mut ListenerPlan) {
    if rules.is_empty() {
        return;
    }
    let at = span(rules);
    let mut live: Vec<Rule> = Vec::new();
    let mut reached = Addrs::default();
    for &d in rules {
        let rule = match parse(d) {
            Ok(Some(rule)) => rule,
            Ok(None) => {
                l.notes.push(Note::not_needed(
                    d,
                    "only clients on unix sockets match it, and sniroute listens on TCP only",
                ));
                continue;
            }
            Err(why) => {
                l.notes.push(Note::lossy(d, why));
                continue;
            }
        };
        if reached.covers(&rule.who) {
            l.notes.push(Note::not_needed(
                d,
                "no client reaches it in nginx: the rules before it match every address it names",
            ));
            continue;
        }
        reached.add(&rule.who);
        live.push(rule);
    }
    let nets = |allow: bool| -> Vec<IpNet> {
        live.iter()
            .filter(|r| r.allow == allow)
            .filter_map(|r| r.who)
            .collect()
    };
    let deny_all = matches!(
        live.last(),
        Some(Rule {
            allow: false,
            who: None
        })
    );
    let (allow, deny) = match (deny_all, nets(true)) {
        // `0.0.0.0/0` and `::/0`: no client at all.
        (true, allow) if allow.is_empty() => (
            Vec::new(),
            vec![IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())],
        ),
        (true, allow) => (allow, nets(false)),
        (false, _) => (Vec::new(), nets(false)),
    };
    let missing = nginx_admits(&live).minus(&sniroute_admits(&allow, &deny));
    if !missing.is_empty() {
        let blocks = missing.blocks();
        let mut named: Vec<String> = blocks.iter().take(NAMED).map(net_text).collect();
        if blocks.len() > NAMED {
            named.push(format!("and {} more blocks", blocks.len() - NAMED));
        }
        l.notes.push(Note::lossy_text(format!(
            "not translated exactly: allow/deny ({at}): nginx admitted {} through an allow\n\
             before a deny that also covers them; in sniroute deny wins over allow, so the\n\
             lists below refuse them. Widen the lists by hand if they must get in.",
            named.join(", ")
        )));
    }
    let text = |nets: &[IpNet]| nets.iter().map(net_text).collect::<Vec<_>>();
    let comment = if missing.is_empty() {
        format!("allow/deny ({at}): the same clients as in nginx")
    } else {
        format!("allow/deny ({at}): fewer clients than in nginx, see above")
    };
    if !allow.is_empty() {
        l.settings.push(Setting {
            key: "allow",
            value: list(&text(&allow)),
            comment: comment.clone(),
        });
    }
    if !deny.is_empty() {
        let comment = if allow.is_empty() {
            comment
        } else {
            String::new()
        };
        l.settings.push(Setting {
            key: "deny",
            value: list(&text(&deny)),
            comment,
        });
    }
}

/// A block of one address is written as the address, as nginx users do.
fn net_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// One nginx rule; `who: None` is `all`.
#[derive(Debug, Clone, Copy)]
struct Rule {
    allow: bool,
    who: Option<IpNet>,
}

/// `Ok(None)` for `unix:`.
fn parse(d: &Directive) -> Result<Option<Rule>, &'static str> {
    let allow = d.name == "allow";
    let [arg] = d.args.as_slice() else {
        return Err("expected one address, block, `all` or `unix:`");
    };
    let who = match arg.as_str() {
        "all" => None,
        "unix:" => return Ok(None),
        text => {
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| "not an address or CIDR block")?
                .trunc();
            // nginx tests IPv4-mapped IPv6 clients against its IPv4 rules, and
            // only clients of a dual-stack socket are mapped; sniroute sees an
            // IPv4 client either way, so such a rule means something else here.
            if let IpNet::V6(v6) = net {
                if v6.prefix_len() >= 96 && v6.addr().to_ipv4_mapped().is_some() {
                    return Err("an IPv4-mapped IPv6 block: nginx matches it only against clients of a dual-stack socket that have no IPv4 rule to meet; write the IPv4 block instead");
                }
            }
            Some(net)
        }
    };
    Ok(Some(Rule { allow, who }))
}

/// The addresses nginx admits with these (live) rules: first match decides,
/// no match admits. Built from the last rule back, each overriding what later
/// ones decided for its addresses.
fn nginx_admits(rules: &[Rule]) -> Addrs {
    let mut admitted = Addrs::all();
    for r in rules.iter().rev() {
        if r.allow {
            admitted.add(&r.who);
        } else {
            admitted.remove(&r.who);
        }
    }
    admitted
}

/// The addresses sniroute admits with these lists.
fn sniroute_admits(allow: &[IpNet], deny: &[IpNet]) -> Addrs {
    let mut admitted = if allow.is_empty() {
        Addrs::all()
    } else {
        let mut a = Addrs::default();
        for n in allow {
            a.add(&Some(*n));
        }
        a
    };
    for n in deny {
        admitted.remove(&Some(*n));
    }
    admitted
}

/// A set of IPv4 and IPv6 addresses: for each family, sorted, disjoint,
/// non-adjacent inclusive ranges, so that equal sets compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Addrs {
    v4: Ranges,
    v6: Ranges,
}

impl Addrs {
    fn all() -> Addrs {
        let mut a = Addrs::default();
        a.add(&None);
        a
    }

    /// The ranges `who` (`None`: everything) spans in each family.
    fn spans(who: &Option<IpNet>) -> [(bool, Option<(u128, u128)>); 2] {
        match who {
            None => [
                (true, Some((0, u128::from(u32::MAX)))),
                (false, Some((0, u128::MAX))),
            ],
            Some(IpNet::V4(n)) => [
                (
                    true,
                    Some((
                        u32::from(n.network()).into(),
                        u32::from(n.broadcast()).into(),
                    )),
                ),
                (false, None),
            ],
            Some(IpNet::V6(n)) => [
                (true, None),
                (
                    false,
                    Some((u128::from(n.network()), u128::from(n.broadcast()))),
                ),
            ],
        }
    }

    fn family(&mut self, v4: bool) -> &mut Ranges {
        if v4 {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    fn add(&mut self, who: &Option<IpNet>) {
        for (v4, span) in Addrs::spans(who) {
            if let Some((lo, hi)) = span {
                self.family(v4).add(lo, hi);
            }
        }
    }

    fn remove(&mut self, who: &Option<IpNet>) {
        for (v4, span) in Addrs::spans(who) {
            if let Some((lo, hi)) = span {
                self.family(v4).remove(lo, hi);
            }
        }
    }

    fn covers(&self, who: &Option<IpNet>) -> bool {
        Addrs::spans(who).iter().all(|(v4, span)| match span {
            None => true,
            Some((lo, hi)) => {
                let ranges = if *v4 { &self.v4 } else { &self.v6 };
                ranges.0.iter().any(|&(a, b)| a <= *lo && *hi <= b)
            }
        })
    }

    fn minus(mut self, other: &Addrs) -> Addrs {
        for &(lo, hi) in &other.v4.0 {
            self.v4.remove(lo, hi);
        }
        for &(lo, hi) in &other.v6.0 {
            self.v6.remove(lo, hi);
        }
        self
    }

    fn is_empty(&self) -> bool {
        self.v4.0.is_empty() && self.v6.0.is_empty()
    }

    /// The set as the fewest CIDR blocks, IPv4 first.
    fn blocks(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for &(lo, hi) in &self.v4.0 {
            let (lo, hi) = (u32::try_from(lo), u32::try_from(hi));
            if let (Ok(lo), Ok(hi)) = (lo, hi) {
                out.extend(Ipv4Subnets::new(lo.into(), hi.into(), 0).map(IpNet::V4));
            }
        }
        for &(lo, hi) in &self.v6.0 {
            out.extend(Ipv6Subnets::new(lo.into(), hi.into(), 0).map(IpNet::V6));
        }
        out
    }
}

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    fn add(&mut self, lo: u128, hi: u128) {
        self.0.push((lo, hi));
        self.0.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(self.0.len());
        for &(lo, hi) in &self.0 {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.0 = merged;
    }

    fn remove(&mut self, lo: u128, hi: u128) {
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < lo || a > hi {
                kept.push((a, b));
                continue;
            }
            if a < lo {
                kept.push((a, lo - 1));
            }
            if b > hi {
                kept.push((hi + 1, b));
            }
        }
        self.0 = kept;
    }
}
