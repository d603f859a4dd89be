//! The config file as written: serde structs that mirror the TOML one to one.
//!
//! Every value is a [`Spanned`] so that [`super::convert`] can point at it when it is wrong, and
//! every struct denies unknown fields so that a typo is an error, not a silently ignored key.
//! Values stay strings and plain integers here; their meaning is decided in `convert`, where
//! the messages can say what was expected in operator terms ("expected IP:PORT") rather than
//! Rust terms ("expected SocketAddr").

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize as DeriveDeserialize;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// The top level: `[global]`, `[[frontend]]`, `[[backend]]`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub global: Option<RawGlobal>,
    #[serde(default)]
    pub frontend: Option<Spanned<List<Spanned<RawFrontend>>>>,
    #[serde(default)]
    pub backend: Option<Spanned<List<Spanned<RawBackend>>>>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGlobal {
    pub max_connections: Option<Spanned<Int>>,
    pub dataplane: Option<Spanned<String>>,
    pub admin: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub nameservers: Option<Spanned<List<Spanned<String>>>>,
    pub kernel_sndbuf: Option<Spanned<Int>>,
    pub kernel_window: Option<Spanned<Int>>,
    pub kernel_after: Option<Spanned<Int>>,
    pub local_agents: Option<Spanned<RawLocalAgents>>,
    pub outgoing_mark: Option<Spanned<Int>>,
    pub tcp_keepalive: Option<Spanned<RawKeepalive>>,
    pub dns: Option<Spanned<RawDns>>,
    pub pid_file: Option<Spanned<String>>,
}

/// `tcp_keepalive = { idle, interval, count }`; a key left out takes its default.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table { idle, interval, count }")]
pub(super) struct RawKeepalive {
    pub idle: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub count: Option<Spanned<Int>>,
}

/// `local_agents = true | false | "always"`.
#[derive(Debug, DeriveDeserialize)]
#[serde(untagged, expecting = "true, false or \"always\"")]
pub(super) enum RawLocalAgents {
    Flag(bool),
    Word(String),
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFrontend {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub backend: Option<Spanned<String>>,
    pub allow: Option<Spanned<List<Spanned<String>>>>,
    pub max_connections: Option<Spanned<Int>>,
    pub tls: Option<Spanned<RawFrontendTls>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub tcp_keepalive: Option<Spanned<RawKeepalive>>,
    pub max_connections_queue: Option<Spanned<String>>,
    // Connect mode (`allow_destinations` and `connect_timeout` also transparent mode).
    pub users: Option<Spanned<List<Spanned<RawUser>>>>,
    pub allow_destinations: Option<Spanned<List<Spanned<String>>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    // Http mode only (`request_timeout` also connect mode).
    pub request_metrics: Option<Spanned<bool>>,
    // Transparent mode only (`connect_timeout` and `allow_destinations` too).
    pub intercept: Option<Spanned<RawIntercept>>,
    pub sniff_timeout: Option<Spanned<String>>,
}

/// `intercept = { ports, from, local }` of a transparent frontend.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table { ports, from, local }")]
pub(super) struct RawIntercept {
    pub ports: Spanned<List<Spanned<Int>>>,
    pub from: Option<Spanned<List<Spanned<String>>>>,
    pub local: Option<Spanned<bool>>,
}

/// A `users` entry. Its Debug output hides the password (serde errors never quote a string
/// value, and convert's messages never mention it).
#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table { name, password }")]
pub(super) struct RawUser {
    pub name: Spanned<String>,
    pub password: Spanned<String>,
}

impl fmt::Debug for RawUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RawUser {{ name: {:?}, password: *** }}",
            self.name.get_ref()
        )
    }
}

/// `rate_limit = { connections = 20, per = "1s" }`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table { connections, per }")]
pub(super) struct RawRateLimit {
    pub connections: Spanned<Int>,
    pub per: Option<Spanned<String>>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBackend {
    pub name: Spanned<String>,
    pub servers: Option<Spanned<List<Spanned<RawServer>>>>,
    pub balance: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<Int>>,
    pub tls: Option<Spanned<RawBackendTls>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub passive: Option<Spanned<RawPassive>>,
    pub dns: Option<Spanned<RawDns>>,
}

/// A server entry: `"host:port"`, or `{ address = "host:port", weight = 3 }`.
#[derive(Debug)]
pub(super) enum RawServer {
    Plain(String),
    Table(RawServerTable),
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawServerTable {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<Int>>,
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServerVisitor;

        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = RawServer;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"HOST:PORT\" or { address = \"HOST:PORT\", weight = N }")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawServer, E> {
                Ok(RawServer::Plain(value.to_owned()))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawServer, A::Error> {
                RawServerTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawServer::Table)
            }
        }

        deserializer.deserialize_any(ServerVisitor)
    }
}

/// `health_check = { interval, timeout, rise, fall, http_path, expect_status }`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawHealthCheck {
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<Int>>,
    pub fall: Option<Spanned<Int>>,
    pub http_path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<Int>>,
}

/// `passive = { fall, backoff }`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawPassive {
    pub fall: Option<Spanned<Int>>,
    pub backoff: Option<Spanned<String>>,
}

/// `dns = { min_ttl, max_ttl }`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawDns {
    pub min_ttl: Option<Spanned<String>>,
    pub max_ttl: Option<Spanned<String>>,
}

/// A frontend's `tls = { ... }`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFrontendTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// More certificates, chosen by SNI.
    pub certs: Option<Spanned<List<Spanned<RawCertFiles>>>>,
    pub client_ca: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
}

/// One entry of `certs = [{ cert = "...", key = "..." }]`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCertFiles {
    pub cert: Spanned<String>,
    pub key: Option<Spanned<String>>,
}

/// A backend's `tls = { ... }`.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBackendTls {
    pub sni: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub verify: Option<Spanned<bool>>,
}

/// A TOML integer. Its own type only so a type error reads "expected an integer" instead of
/// serde's "expected i64"; the range is checked in `convert`, per key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Int, E> {
                Ok(Int(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Int, E> {
                i64::try_from(value)
                    .map(Int)
                    .map_err(|_| E::custom(format!("integer {value} is too large")))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

/// A TOML array. Its own type only so a type error reads "expected an array" instead of
/// serde's "expected a sequence".
#[derive(Debug)]
pub(super) struct List<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
            type Value = List<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(items))
            }
        }

        deserializer.deserialize_seq(ListVisitor(PhantomData))
    }
}
