//! The live image's configuration: a kernel command line (the whole line, everyone's
//! parameters) and a `ferry.toml` from a stick anyone may have edited. Parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is the command line, the rest the file.
    let (line, toml) = text.split_once('\n').unwrap_or((&text, ""));
    let mut cfg = ferry::init::cmdline::LiveConfig::from_cmdline(line);
    let _ = cfg.merge_toml(toml, line);
    let _ = cfg.missing_keys();
});
