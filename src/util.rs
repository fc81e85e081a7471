//! Small helpers shared by the verbs: human-readable sizes and rates.

/// `1.5 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `12m05s`, `3h02m`, `45s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Seconds since the Unix epoch as `2026-11-28 17:02:11Z` (UTC; no time zone database needed).
pub fn utc_time(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Makes glibc give every large buffer (a chunk body, 4 MiB) back to the system when it is
/// freed. By default glibc raises its mmap threshold after each large free, up to 32 MiB; from
/// then on chunk bodies come from the heap, whose freed pages stay in the process. Measured on
/// the receiver with 50 sources at once (scripts/bench-wave): peak RSS 288 MiB by default,
/// 132 MiB with the threshold fixed, at the same throughput.
pub fn return_large_buffers_to_the_system() {
    // SAFETY: mallopt only sets an allocator parameter; glibc serialises it with allocation.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    if ok != 1 {
        log::debug!("mallopt(M_MMAP_THRESHOLD) was refused; large buffers may stay in the heap");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(725), "12m05s");
        assert_eq!(human_duration(10920), "3h02m");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(1_795_889_008), "2026-11-28 18:03:28Z"); // as `date -u -d @1795889008` prints
    }
}

/// Text from machines (DMI strings, disk models, partition names, boot logs) as a terminal may
/// show it: control characters other than newline and tab (escape sequences that move the
/// cursor, retitle the window or fake output) become `?`.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c) { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn escapes_do_not_reach_the_terminal() {
        let hostile = "\u{1b}]0;TITLE\u{7}\u{1b}[2J\u{1b}[31mFAKE: job verified\u{9b}1m\r\nnext\tline";
        let shown = super::printable(hostile);
        assert!(!shown.chars().any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\r' || c == '\u{9b}'), "{shown:?}");
        assert_eq!(shown, "?]0;TITLE??[2J?[31mFAKE: job verified?1m?\nnext\tline");
        assert_eq!(super::printable("Dell Inc. PowerEdge R640 — ü"), "Dell Inc. PowerEdge R640 — ü");
    }
}
