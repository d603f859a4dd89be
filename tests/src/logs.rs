//! The daemon's JSON log (`log_format = "json"`, one object per line on stderr) and its
//! per-connection lines ("connection closed").
use serde_json::Value;

/// The message of the line the daemon writes when a connection ends.
pub const CONNECTION_CLOSED: &str = "connection closed";

/// One "connection closed" line.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnLog {
    pub frontend: String,
    pub client: String,
    pub backend: String,
    pub server: String,
    /// "kernel", "userspace" or "none".
    pub path: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Milliseconds, possibly fractional; NaN when the line has none.
    pub duration_ms: f64,
    /// client_close, upstream_close, client_reset, upstream_reset, connect_failed, rejected,
    /// shutdown or error.
    pub end: String,
    /// Of the bytes, those copied through userspace (a kernel-path connection's tail).
    pub userspace_up: u64,
    pub userspace_down: u64,
    /// Directions of a kernel-path connection handed to userspace.
    pub pauses: u64,
    pub resumes: u64,
    /// Of `bytes_up`, those a same-host agent sent straight into the upstream socket.
    pub direct_up: u64,
}

/// Every line of `text` that parses as a JSON object.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// The event fields of a tracing-subscriber JSON line: under "fields", or at the top level
/// when the subscriber flattens events.
fn fields(line: &Value) -> &Value {
    line.get("fields").unwrap_or(line)
}

fn string(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn number(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn float(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The "connection closed" lines of `text`, in order. A line with that message but missing
/// byte counts is kept with `u64::MAX` there, so that an assertion shows it rather than
/// silently skipping it.
pub fn conn_logs(text: &str) -> Vec<ConnLog> {
    json_lines(text)
        .iter()
        .map(fields)
        .filter(|f| f.get("message").and_then(Value::as_str) == Some(CONNECTION_CLOSED))
        .map(|f| ConnLog {
            frontend: string(f, "frontend"),
            client: string(f, "client"),
            backend: string(f, "backend"),
            server: string(f, "server"),
            path: string(f, "path"),
            bytes_up: number(f, "bytes_up").unwrap_or(u64::MAX),
            bytes_down: number(f, "bytes_down").unwrap_or(u64::MAX),
            duration_ms: float(f, "duration_ms").unwrap_or(f64::NAN),
            userspace_up: number(f, "userspace_up").unwrap_or(u64::MAX),
            userspace_down: number(f, "userspace_down").unwrap_or(u64::MAX),
            pauses: number(f, "pauses").unwrap_or(u64::MAX),
            resumes: number(f, "resumes").unwrap_or(u64::MAX),
            direct_up: number(f, "direct_up").unwrap_or(u64::MAX),
            end: string(f, "end"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_and_flat_lines() {
        let text = concat!(
            "not json\n",
            r#"{"timestamp":"t","level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:7000"}}"#,
            "\n",
            r#"{"level":"INFO","fields":{"message":"connection closed","frontend":"fe","client":"127.0.0.1:5","backend":"be","server":"127.0.0.1:7001","path":"kernel","bytes_up":1073741824,"bytes_down":"12","duration_ms":0.25,"end":"client_close"},"target":"x"}"#,
            "\n",
            r#"{"message":"connection closed","frontend":"fe","path":"none","end":"connect_failed","bytes_up":0,"bytes_down":0,"duration_ms":1}"#,
            "\n",
        );
        let logs = conn_logs(text);
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].path, "kernel");
        assert_eq!(logs[0].bytes_up, 1 << 30);
        assert_eq!(logs[0].bytes_down, 12);
        assert_eq!(logs[0].server, "127.0.0.1:7001");
        assert_eq!(logs[0].duration_ms, 0.25);
        assert_eq!(logs[1].end, "connect_failed");
        assert_eq!(logs[1].duration_ms, 1.0);
        assert_eq!(logs[1].backend, "");
    }
}
