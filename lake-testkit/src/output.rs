//! What a job printed, read the way a person or a log pipeline reads it.

use std::process::{Command, Output, Stdio};

/// Every line of `text` as JSON; panics naming the first line that is not
/// (JSON logs must be pure).
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// The first JSON log line of `text` whose `message` is `message`.
pub fn message(text: &str, message: &str) -> Option<serde_json::Value> {
    json_lines(text)
        .into_iter()
        .find(|v| v["message"] == message)
}

/// Runs `cmd` as `cmd | head -0` does: its stdout is closed before it writes.
pub fn with_stdout_closed(cmd: &mut Command) -> std::io::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    drop(child.stdout.take());
    child.wait_with_output()
}
