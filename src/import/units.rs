//! nginx's time and size values (`fail_timeout=1m30s`, `preread_buffer_size 16k`).
//!
//! nginx writes times as one or more `<number><unit>` parts, units `ms`, `s`,
//! `m`, `h`, `d`, `w`, `M` (30 days) and `y` (365 days), a bare number being
//! seconds; sizes as a number with an optional `k` or `m` suffix. The importer
//! turns both into plain values and writes them back in sniroute's syntax.

use std::time::Duration;

/// Parses an nginx time (`10s`, `1m30s`, `500ms`, `90`); `None` if it is not one.
pub fn parse_time(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            let secs = match rest.chars().next() {
                Some('s') => 1,
                Some('m') => 60,
                Some('h') => 3600,
                Some('d') => 86_400,
                Some('w') => 7 * 86_400,
                Some('M') => 30 * 86_400,
                Some('y') => 365 * 86_400,
                _ => return None,
            };
            (Duration::from_secs(secs), 1)
        };
        rest = &rest[len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
    }
    Some(total)
}

/// Parses an nginx size (`16k`, `1m`, `4096`) into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, factor) = match text.chars().last()? {
        'k' | 'K' => (&text[..text.len() - 1], 1024),
        'm' | 'M' => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

/// A duration in sniroute's syntax: `5s`, `1m 30s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_nginx_unit() {
        let s = Duration::from_secs;
        assert_eq!(parse_time("10s"), Some(s(10)));
        assert_eq!(parse_time("90"), Some(s(90)));
        assert_eq!(parse_time("1m30s"), Some(s(90)));
        assert_eq!(parse_time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_time("1h"), Some(s(3600)));
        assert_eq!(parse_time("2d"), Some(s(2 * 86_400)));
        assert_eq!(parse_time("1w"), Some(s(7 * 86_400)));
        assert_eq!(parse_time("1M"), Some(s(30 * 86_400)));
        assert_eq!(parse_time("1y"), Some(s(365 * 86_400)));
        assert_eq!(parse_time("1s500ms"), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn not_times() {
        for bad in ["", "s", "10x", "1.5s", "-1s", "10 s", "ms"] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16k"), Some(16 * 1024));
        assert_eq!(parse_size("1m"), Some(1024 * 1024));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("16x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn formats_as_sniroute_reads_durations() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        for d in [1, 90, 600, 3600, 86_400] {
            let text = format_duration(Duration::from_secs(d));
            assert_eq!(
                humantime::parse_duration(&text).unwrap(),
                Duration::from_secs(d)
            );
        }
    }
}
