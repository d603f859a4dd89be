//! Raw → typed for the upstream-pool keys of a backend: server entries with weights,
//! `health_check`, `passive` and `dns`.

use std::time::Duration;

use toml::Spanned;

use super::convert::{Result, SpanError, error_at, int, parse_at};
use super::raw::{RawDns, RawHealthCheck, RawPassive, RawServer};
use super::{DnsTtl, HealthCheck, HttpCheck, Passive, ServerSpec, value};

/// One entry of `servers`.
pub(super) fn server(spanned: &Spanned<RawServer>) -> Result<ServerSpec> {
    match spanned.get_ref() {
        RawServer::Plain(text) => Ok(ServerSpec {
            addr: value::server(text).map_err(|message| error_at(spanned.span(), message))?,
            weight: ServerSpec::DEFAULT_WEIGHT,
        }),
        RawServer::Table(table) => {
            let addr = parse_at(&table.address, |text| value::server(text))?;
            let weight = match &table.weight {
                Some(weight) => int("weight", weight, 1, i64::from(ServerSpec::MAX_WEIGHT))?,
                None => ServerSpec::DEFAULT_WEIGHT,
            };
            Ok(ServerSpec { addr, weight })
        }
    }
}

/// A duration that must be more than zero.
fn positive_duration(key: &str, spanned: &Spanned<String>) -> Result<Duration> {
    parse_at(spanned, |text| match value::duration(key, text)? {
        zero if zero.is_zero() => Err(format!("invalid {key} \"{text}\": expected more than zero")),
        duration => Ok(duration),
    })
}

fn duration_or(
    key: &str,
    spanned: Option<&Spanned<String>>,
    default: Duration,
) -> Result<Duration> {
    spanned.map_or(Ok(default), |spanned| positive_duration(key, spanned))
}

pub(super) fn health_check(spanned: &Spanned<RawHealthCheck>) -> Result<HealthCheck> {
    let raw = spanned.get_ref();
    let interval = duration_or(
        "interval",
        raw.interval.as_ref(),
        HealthCheck::DEFAULT_INTERVAL,
    )?;
    let timeout = duration_or(
        "timeout",
        raw.timeout.as_ref(),
        HealthCheck::DEFAULT_TIMEOUT,
    )?;
    if timeout > interval {
        let at = raw.timeout.as_ref().map_or(spanned.span(), Spanned::span);
        return Err(error_at(
            at,
            format!(
                "health_check timeout ({}) must not exceed its interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    let count = |key: &str, spanned: Option<&Spanned<_>>, default: u32| -> Result<u32> {
        spanned.map_or(Ok(default), |spanned| int(key, spanned, 1, 1000))
    };
    let rise = count("rise", raw.rise.as_ref(), HealthCheck::DEFAULT_RISE)?;
    let fall = count("fall", raw.fall.as_ref(), HealthCheck::DEFAULT_FALL)?;
    let expect_status = match &raw.expect_status {
        Some(status) => Some(int("expect_status", status, 100, 599)?),
        None => None,
    };
    let http = match (&raw.http_path, expect_status) {
        (Some(path), expect_status) => {
            let path = parse_at(path, |text| {
                let valid = text.starts_with('/') && text.bytes().all(|b| b.is_ascii_graphic());
                if valid {
                    Ok(text.clone())
                } else {
                    Err(format!(
                        "invalid http_path \"{text}\": expected a path starting with '/', without spaces"
                    ))
                }
            })?;
            Some(HttpCheck {
                path,
                expect_status,
            })
        }
        (None, Some(_)) => {
            let at = raw
                .expect_status
                .as_ref()
                .map_or(spanned.span(), Spanned::span);
            return Err(error_at(at, "expect_status needs http_path"));
        }
        (None, None) => None,
    };
    Ok(HealthCheck {
        interval,
        timeout,
        rise,
        fall,
        http,
    })
}

pub(super) fn passive(spanned: &Spanned<RawPassive>) -> Result<Passive> {
    let raw = spanned.get_ref();
    let default = Passive::default();
    Ok(Passive {
        fall: match &raw.fall {
            Some(fall) => int("fall", fall, 0, 1000)?,
            None => default.fall,
        },
        backoff: duration_or("backoff", raw.backoff.as_ref(), default.backoff)?,
    })
}

pub(super) fn dns(spanned: &Spanned<RawDns>) -> Result<DnsTtl> {
    let raw = spanned.get_ref();
    let default = DnsTtl::default();
    let min_ttl = match &raw.min_ttl {
        // A floor keeps a zero-TTL record from turning into a query loop.
        Some(min) => parse_at(min, |text| match value::duration("min_ttl", text)? {
            short if short < Duration::from_secs(1) => {
                Err(format!("invalid min_ttl \"{text}\": expected at least 1s"))
            }
            min => Ok(min),
        })?,
        None => default.min_ttl,
    };
    let max_ttl = duration_or("max_ttl", raw.max_ttl.as_ref(), default.max_ttl)?;
    if min_ttl > max_ttl {
        let at = raw
            .max_ttl
            .as_ref()
            .or(raw.min_ttl.as_ref())
            .map_or(spanned.span(), Spanned::span);
        return Err(SpanError {
            offset: at.start,
            message: format!(
                "dns min_ttl ({}) must not exceed max_ttl ({})",
                humantime::format_duration(min_ttl),
                humantime::format_duration(max_ttl)
            ),
        });
    }
    Ok(DnsTtl { min_ttl, max_ttl })
}
