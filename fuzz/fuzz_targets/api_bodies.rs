//! Every JSON body the receiver's API takes, as a hostile client may send it: decoding must
//! never panic, and what decodes must survive the checks the receiver runs on it.
#![no_main]

use ferry::wire::*;
use libfuzzer_sys::fuzz_target;

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

fuzz_target!(|data: &[u8]| {
    let _ = decode::<CreateJob>(data);
    let _ = decode::<CreateEnrollment>(data);
    if let Some(r) = decode::<EnrollRequest>(data) {
        let _ = ferry::machine::same_machine(&r.machine, &r.machine);
    }
    let _ = decode::<Register>(data);
    let _ = decode::<BeginDisk>(data);
    let _ = decode::<MissingQuery>(data);
    let _ = decode::<ProgressReport>(data);
    let _ = decode::<Failure>(data).map(|f| Code::parse(&f.code));
    let _ = decode::<TargetRegister>(data);
    let _ = decode::<TargetBegin>(data);
    let _ = decode::<TargetProgress>(data);
    let _ = decode::<TargetDone>(data);
    if let Some(spec) = decode::<TargetSpec>(data) {
        let _ = spec.names_a_target();
    }
});
