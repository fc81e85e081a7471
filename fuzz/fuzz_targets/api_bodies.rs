//! Every JSON body the receiver's API takes, as a hostile client may send it: decoding must
//! never panic, and what decodes must survive the checks the receiver runs on it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::api_bodies(data));
