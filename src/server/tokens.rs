//! Tokens at rest: the receiver keeps only their SHA-256 (enough for 256-bit random tokens: no
//! dictionary to try), so a copy of its database lets nobody send, read or enroll. A token is
//! shown once, when made. The admin and viewer tokens are the operator's files, not kept here.
//! A job that an enrollment made for a machine has a token the machine can be given again
//! after a reboot without it being stored: derived from the enrollment token and the job id.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a stored hash begins (a database from before keeps plaintext until it is converted).
pub const HASHED: &str = "sha256:";

/// Compares two tokens in constant time. Lengths are not secret: every token is 64 hex digits.
pub fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub fn hash(token: &str) -> String {
    format!("{HASHED}{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// Whether a presented token is the one `stored` keeps, in constant time.
pub fn matches(presented: &str, stored: &str) -> bool {
    match stored.strip_prefix(HASHED) {
        Some(h) => equal(&hex::encode(Sha256::digest(presented.as_bytes())), h),
        None => false,
    }
}

/// The agent token of job `job` made by the enrollment whose token is `enrollment_token`:
/// BLAKE3 keyed by that token. Only a holder of the enrollment token can compute it.
pub fn derived_job_token(enrollment_token: &str, job: &str) -> String {
    let key = blake3::derive_key("ferry 2026 enrolled job token", enrollment_token.as_bytes());
    blake3::keyed_hash(&key, job.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_matches_its_hash() {
        let t = "ab".repeat(32);
        let h = hash(&t);
        assert!(h.starts_with(HASHED) && !h.contains(&t));
        assert!(matches(&t, &h));
        assert!(!matches(&"ac".repeat(32), &h));
        assert!(!matches(&t, &t), "plaintext in the database matches nothing");
        let j = derived_job_token(&t, "job1");
        assert_eq!(j, derived_job_token(&t, "job1"));
        assert_ne!(j, derived_job_token(&t, "job2"));
        assert_ne!(j, derived_job_token(&"cd".repeat(32), "job1"));
        assert_eq!(j.len(), 64);
    }
}
