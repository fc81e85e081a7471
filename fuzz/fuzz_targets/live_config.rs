//! The live image's configuration: a kernel command line (the whole line, everyone's
//! parameters) and a `ferry.toml` from a stick anyone may have edited. Parsing never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::live_config(data));
