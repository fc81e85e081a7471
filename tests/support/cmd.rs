//! The ferry binary under test, and running tools with their success asserted.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The ferry binary cargo built for these tests.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Runs the ferry binary under test (stdin is /dev/null).
pub fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).stdin(Stdio::null()).output().expect("running ferry")
}

/// Runs ferry, asserts exit 0, and parses its stdout as JSON.
pub fn ferry_json(args: &[&str]) -> Value {
    let out = ferry(args);
    assert!(
        out.status.success(),
        "ferry {args:?} exited with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ferry {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs `cmd`, asserts it succeeded (the panic shows its stdout and stderr), returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    succeeded(&format!("{cmd:?}"), out)
}

/// Runs a tool with stdin /dev/null, asserts it succeeded, returns its stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    run_ok(Command::new(tool).args(args).stdin(Stdio::null()))
}

/// Runs a tool with `input` on stdin, asserts it succeeded, returns its stdout.
pub fn run_with_input(tool: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    succeeded(&format!("{tool} {args:?}"), child.wait_with_output().unwrap())
}

/// Asserts that the command `what` exited 0 (the panic shows its stdout and stderr); its stdout.
fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
