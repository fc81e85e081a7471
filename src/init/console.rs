//! What the technician reads: plain lines that hold up on an 80x25 VGA console and a serial
//! console alike (no cursor tricks, so a serial log reads cleanly), and a verdict in words.

use serde::{Deserialize, Serialize};

/// The end of the work, as the screen and the supervisor see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// `MIGRATED` or `FAILED`.
    pub headline: String,
    /// What happened, one line each.
    pub lines: Vec<String>,
    /// What the technician should do now (FAILED only).
    #[serde(default)]
    pub advice: Vec<String>,
    /// The on-finish action and countdown in force (the kernel command line merged with
    /// ferry.toml), for the supervisor, which only sees the command line itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_finish: Option<super::cmdline::OnFinish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown: Option<u64>,
}

/// Where the worker leaves its verdict for the supervisor.
pub const VERDICT_PATH: &str = "/run/ferry/verdict.json";

const WIDTH: usize = 78;

/// The verdict framed for the screen.
pub fn render_verdict(v: &Verdict) -> String {
    let bar = if v.ok { "=" } else { "!" }.repeat(WIDTH);
    let spaced: String = v.headline.chars().map(|c| format!("{c} ")).collect::<String>().trim_end().to_string();
    // A headline of several words (MIGRATED WITH N UNREADABLE SECTORS) reads as it is.
    let spaced = if v.headline.contains(' ') { v.headline.clone() } else { spaced };
    let mut out = format!("\n{bar}\n\n{:^WIDTH$}\n\n", spaced);
    for l in &v.lines {
        for piece in wrap(l, WIDTH - 2) {
            out += &format!("  {piece}\n");
        }
    }
    if !v.advice.is_empty() {
        out += "\n  What to do:\n";
        for a in &v.advice {
            for (i, piece) in wrap(a, WIDTH - 6).into_iter().enumerate() {
                out += &format!("  {} {piece}\n", if i == 0 { " -" } else { "  " });
            }
        }
    }
    out += &format!("\n{bar}\n");
    out
}

/// Splits a line into pieces of at most `width` characters, at spaces where possible.
pub fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for word in line.split(' ') {
        let mut word = word.to_string();
        while word.chars().count() > width {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            out.push(head);
        }
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur += &word;
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// The consoles the kernel writes to (`console=` on the command line; /dev/console is only the
/// last of them). A technician may watch the VGA screen while IPMI records the serial port, so
/// every line goes to every one of them.
fn active_consoles() -> Vec<std::fs::File> {
    let names = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    names
        .split_whitespace()
        .filter_map(|n| std::fs::OpenOptions::new().write(true).open(format!("/dev/{n}")).ok())
        .collect()
}

static CONSOLES: std::sync::OnceLock<std::sync::Mutex<Vec<std::fs::File>>> = std::sync::OnceLock::new();

/// Writes `text` to every active console, or to stdout when there is none (tests, a host).
pub fn say(text: &str) {
    say_raw(&fit_80_columns(text));
}

/// Every line of `text` cut to the 80 columns of a VGA text console (and of a serial terminal's
/// default), at spaces where possible, continuations indented: a line the console wraps itself
/// breaks tables and, on serial, leaves the cursor where the next line garbles it.
pub fn fit_80_columns(text: &str) -> String {
    const COLUMNS: usize = 80;
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.chars().count() <= COLUMNS {
            out.push_str(line);
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        for (j, piece) in wrap(line.trim_start(), COLUMNS - indent - 4).into_iter().enumerate() {
            if j > 0 {
                out.push('\n');
                out.push_str("    ");
            }
            out.push_str(&" ".repeat(indent));
            out.push_str(&piece);
        }
    }
    out
}

/// Everything said on the screens, for the receiver's copy of the boot log (the newest
/// [`TRANSCRIPT_LIMIT`] bytes).
static TRANSCRIPT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
const TRANSCRIPT_LIMIT: usize = 200 << 10;

/// The console transcript so far.
pub fn transcript() -> String {
    TRANSCRIPT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn say_raw(text: &str) {
    use std::io::Write;
    {
        let mut t = TRANSCRIPT.lock().unwrap_or_else(|p| p.into_inner());
        t.push_str(text);
        if t.len() > TRANSCRIPT_LIMIT {
            let mut cut = t.len() - TRANSCRIPT_LIMIT;
            while !t.is_char_boundary(cut) {
                cut += 1;
            }
            t.drain(..cut);
        }
    }
    let consoles = CONSOLES.get_or_init(|| std::sync::Mutex::new(vec![]));
    let mut consoles = consoles.lock().unwrap_or_else(|p| p.into_inner());
    if consoles.is_empty() {
        // Early in boot /sys may not be mounted yet: look again next time.
        *consoles = active_consoles();
    }
    // Serial lines want CR LF; the tty layer adds the CR for us.
    if consoles.is_empty() {
        print!("{text}");
        let _ = std::io::stdout().flush();
        return;
    }
    for c in consoles.iter_mut() {
        let _ = c.write_all(text.as_bytes());
    }
}

/// `println!` for the technician's screens.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::init::console::say(&format!("{}\n", format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_screen_lines_are_cut_to_80_columns() {
        let long = format!("disk 0 /dev/vda: read back equal to the source (blake3 {})", "ab".repeat(32));
        let table = "/dev/nvme0n1  64.0 MiB  sectors 512/512  mbr  QEMU NVMe Ctrl DEMO-DATA  (read-only)";
        let text = format!("short\n{long}\n  {table}\n");
        let out = fit_80_columns(&text);
        assert!(out.starts_with("short\n") && out.ends_with('\n'));
        for l in out.lines() {
            assert!(l.chars().count() <= 80, "{l:?}");
        }
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(words(&out), words(&text), "nothing lost");
        assert!(out.lines().nth(2).unwrap().starts_with("    "), "continuations are indented");
    }

    #[test]
    fn verdict_fits_80_columns() {
        let v = Verdict {
            ok: false,
            headline: "FAILED".into(),
            lines: vec![format!("disk 0 /dev/vda blake3 {}", "ab".repeat(32)), "x".repeat(200)],
            advice: vec!["Check the cable and that the receiver at https://10.0.0.5:8443 is running, then reboot this machine from the stick.".into()],
            on_finish: None,
            countdown: None,
        };
        let s = render_verdict(&v);
        assert!(s.contains("F A I L E D"));
        assert!(s.contains("What to do"));
        for l in s.lines() {
            assert!(l.chars().count() <= 80, "{l:?} is {} wide", l.chars().count());
        }
        // The full hash survives wrapping.
        let joined: String = s.lines().map(str::trim).collect();
        assert!(joined.contains(&"ab".repeat(32)));
    }

    #[test]
    fn wrap_keeps_words() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap("", 4), [""]);
        assert_eq!(wrap("abcdefgh", 3), ["abc", "def", "gh"]);
    }
}
