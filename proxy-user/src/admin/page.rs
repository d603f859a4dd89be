//! The `/stats` page for browsers: the same document as the JSON (so both always agree),
//! rendered as HTML tables in the spirit of HAProxy's stats page, refreshing itself every 5 s.
//! No script, no external resource: it works from a jump host without internet access.
use std::fmt::Write as _;

use serde_json::Value;

/// Seconds between the page's own refreshes.
const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}\
th{background:#e8eef4}td.name,th.name{text-align:left}\
tr.down td{background:#f8d7d7}tr.up td.state{background:#d4f0d4}\
.error{color:#a00}.muted{color:#777}";

/// The page of `document` (see [`super::stats`], with `version`, `uptime_seconds`, `reload`).
pub(super) fn render(document: &Value) -> String {
    let mut html = String::with_capacity(4096);
    let _ = writeln!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>agent-proxy stats</title><style>{STYLE}</style></head><body>"
    );
    summary(&mut html, document);
    frontends(&mut html, document);
    backends(&mut html, document);
    maps(&mut html, document);
    let _ = writeln!(
        html,
        "<p class=\"muted\">Refreshes every {REFRESH_SECONDS} s. The same figures as JSON: \
         <code>curl http://ADMIN/stats</code>; Prometheus: <code>/metrics</code>.</p>\
         </body></html>"
    );
    html
}

fn summary(html: &mut String, doc: &Value) {
    let reload = &doc["reload"];
    let last = match reload["last"]["result"].as_str() {
        Some(result) => {
            let error = reload["last"]["error"]
                .as_str()
                .map(|e| {
                    format!(
                        " <span class=\"error\" id=\"reload-error\">{}</span>",
                        escape(e)
                    )
                })
                .unwrap_or_default();
            format!(
                "<span id=\"reload-result\">{}</span>{error}",
                escape(result)
            )
        }
        None => "<span id=\"reload-result\">none</span>".to_owned(),
    };
    let _ = writeln!(
        html,
        "<h1>agent-proxy</h1>\n<p>version <span id=\"version\">{}</span> &middot; up \
         <span id=\"uptime\" data-seconds=\"{}\">{}</span> &middot; data path \
         <span id=\"dataplane\">{}</span> &middot; reloads <span id=\"reloads\">{}</span> \
         (last: {last})</p>",
        text(&doc["version"]),
        doc["uptime_seconds"].as_u64().unwrap_or(0),
        duration(doc["uptime_seconds"].as_u64().unwrap_or(0)),
        text(&doc["dataplane"]),
        reload["reloads"].as_u64().unwrap_or(0),
    );
}

fn frontends(html: &mut String, doc: &Value) {
    html.push_str(
        "<h2>Frontends</h2>\n<table id=\"frontends\"><tr><th class=\"name\">frontend</th>\
         <th>current</th><th>total</th><th>rejected</th><th>bytes up</th><th>bytes down</th>\
         <th>kernel share</th></tr>\n",
    );
    if let Some(frontends) = doc["frontends"].as_object() {
        for (name, fe) in frontends {
            let bytes = &fe["bytes"];
            let (up, down) = (total(&bytes["upstream"]), total(&bytes["downstream"]));
            let kernel =
                count(&bytes["upstream"]["kernel"]) + count(&bytes["downstream"]["kernel"]);
            let share = if up + down == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} %", kernel as f64 * 100.0 / (up + down) as f64)
            };
            let _ = writeln!(
                html,
                "<tr data-frontend=\"{name}\"><td class=\"name\">{name}</td>\
                 <td class=\"current\">{}</td><td class=\"total\">{}</td>\
                 <td class=\"rejected\">{}</td><td class=\"up\">{up}</td>\
                 <td class=\"down\">{down}</td><td class=\"kernel-share\">{share}</td></tr>",
                count(&fe["current_connections"]),
                count(&fe["connections_total"]),
                count(&fe["rejected"]),
                name = escape(name),
            );
        }
    }
    html.push_str("</table>\n");
}

fn backends(html: &mut String, doc: &Value) {
    html.push_str(
        "<h2>Backends</h2>\n<table id=\"backends\"><tr><th class=\"name\">backend</th>\
         <th class=\"name\">server</th><th class=\"name\">address</th><th>state</th>\
         <th>weight</th><th>connections</th><th class=\"name\">last check</th></tr>\n",
    );
    if let Some(backends) = doc["backends"].as_object() {
        for (name, servers) in backends {
            for server in servers.as_array().into_iter().flatten() {
                let up = server["up"].as_bool().unwrap_or(false);
                let check = &server["last_check"];
                let last = if check.is_null() {
                    "<span class=\"muted\">none</span>".to_owned()
                } else {
                    match check["error"].as_str() {
                        Some(error) => {
                            format!("failed: <span class=\"error\">{}</span>", escape(error))
                        }
                        None => "passed".to_owned(),
                    }
                };
                let _ = writeln!(
                    html,
                    "<tr class=\"{state}\" data-backend=\"{backend}\" data-address=\"{address}\">\
                     <td class=\"name\">{backend}</td><td class=\"name server\">{server_name}</td>\
                     <td class=\"name address\">{address}</td><td class=\"state\">{STATE}</td>\
                     <td class=\"weight\">{weight}</td><td class=\"active\">{active}</td>\
                     <td class=\"name check\">{last}</td></tr>",
                    state = if up { "up" } else { "down" },
                    STATE = if up { "UP" } else { "DOWN" },
                    backend = escape(name),
                    server_name = text(&server["server"]),
                    address = text(&server["address"]),
                    weight = text(&server["weight"]),
                    active = text(&server["active_connections"]),
                );
            }
        }
    }
    html.push_str("</table>\n");
}

fn maps(html: &mut String, doc: &Value) {
    let Some(maps) = doc["kernel_map_entries"]
        .as_object()
        .filter(|m| !m.is_empty())
    else {
        return;
    };
    html.push_str(
        "<h2>Kernel maps</h2>\n<table id=\"maps\"><tr><th class=\"name\">map</th><th>entries</th></tr>\n",
    );
    for (name, entries) in maps {
        let _ = writeln!(
            html,
            "<tr data-map=\"{name}\"><td class=\"name\">{name}</td><td class=\"entries\">{}</td></tr>",
            count(entries),
            name = escape(name),
        );
    }
    html.push_str("</table>\n");
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Kernel plus userspace bytes of one direction.
fn total(direction: &Value) -> u64 {
    count(&direction["kernel"]) + count(&direction["userspace"])
}

/// A scalar as text, escaped; "-" for null.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// `3d 4h 5m 6s`, leading zero units left out.
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    let mut out = String::new();
    for (value, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if value > 0 || !out.is_empty() {
            let _ = write!(out, "{value}{unit} ");
        }
    }
    let _ = write!(out, "{s}s");
    out
}

/// HTML-escapes text for element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shows_what_the_document_says_escaped() {
        let doc = json!({
            "version": "0.1.0 (abc1234)",
            "uptime_seconds": 3_725,
            "dataplane": "kernel",
            "reload": { "reloads": 2, "last": { "result": "error", "error": "a.toml:1:8: <bad>" } },
            "frontends": { "fe": {
                "current_connections": 2, "connections_total": 7, "rejected": 1,
                "bytes": { "upstream": { "kernel": 300, "userspace": 0 },
                           "downstream": { "kernel": 0, "userspace": 100 } } } },
            "backends": { "be": [
                { "server": "intake:443", "address": "10.0.0.1:443", "up": true, "weight": 1,
                  "active_connections": 2, "last_check": null },
                { "server": "intake:443", "address": "10.0.0.2:443", "up": false, "weight": 1,
                  "active_connections": 0, "last_check": { "at_unix": 1, "error": "refused" } } ] },
            "kernel_map_entries": { "SPLICE_SOCKS": 4 },
        });
        let page = render(&doc);
        for expected in [
            "<span id=\"version\">0.1.0 (abc1234)</span>",
            ">1h 2m 5s<",
            "<span id=\"reloads\">2</span>",
            "a.toml:1:8: &lt;bad&gt;",
            "<td class=\"current\">2</td><td class=\"total\">7</td><td class=\"rejected\">1</td>\
             <td class=\"up\">300</td><td class=\"down\">100</td><td class=\"kernel-share\">75.0 %</td>",
            "<tr class=\"up\" data-backend=\"be\" data-address=\"10.0.0.1:443\">",
            "<tr class=\"down\" data-backend=\"be\" data-address=\"10.0.0.2:443\">",
            "failed: <span class=\"error\">refused</span>",
            "<td class=\"entries\">4</td>",
            "http-equiv=\"refresh\"",
        ] {
            assert!(page.contains(expected), "missing {expected:?} in:\n{page}");
        }
        assert!(!page.contains("<bad>"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(86_400 + 5), "1d 0h 0m 5s");
    }
}
