//! Monitoring's snapshot as Prometheus text (the OpenMetrics exposition,
//! made by `prometheus-client`): counters since the ledger began, gauges for
//! the active version, the shares of recent traffic and the last rotation's
//! duration, and the event log's own health.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tes_proto::event::MetricsSnapshot;
use tes_proto::metrics::FULL_BP;

use crate::event_log::LogHealth;

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `snapshot` (none before Monitoring's first) and, from
/// Telemetry itself, the event log's health.
pub fn render(snapshot: Option<&MetricsSnapshot>, log: Option<LogHealth>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition {
        snapshot: snapshot.cloned(),
        log,
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct Exposition {
    snapshot: Option<MetricsSnapshot>,
    log: Option<LogHealth>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<N>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn ratio(bp: u32) -> f64 {
    f64::from(bp) / f64::from(FULL_BP)
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(log) = self.log {
            counter(
                &mut e,
                "tes_event_log_lines",
                "Lines written to the JSON-lines event log",
                log.written,
            )?;
            counter(
                &mut e,
                "tes_event_log_dropped_lines",
                "Event log lines lost to write errors (e.g. a full disk)",
                log.dropped,
            )?;
        }
        let Some(s) = &self.snapshot else {
            return Ok(());
        };
        gauge(
            &mut e,
            "tes_ledger_seq",
            "Ledger seq of the last event counted",
            s.seq as i64,
        )?;
        gauge(
            &mut e,
            "tes_snapshot_timestamp_seconds",
            "Time the snapshot describes",
            s.at.as_millis() as f64 / 1000.0,
        )?;
        if let Some(active) = s.active {
            gauge(
                &mut e,
                "tes_active_key_version",
                "The key version that signs now",
                i64::from(active.get()),
            )?;
        }
        {
            let mut family = e.encode_descriptor(
                "tes_signatures",
                "Signatures made, per key version (signature_generated)",
                None,
                MetricType::Counter,
            )?;
            for v in &s.versions {
                let version = v.version.to_string();
                ConstCounter::new(v.signatures)
                    .encode(family.encode_family(&[("key_version", version.as_str())])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "tes_signing_requests_served",
                "Signing requests per key version that served them (the primary signature)",
                None,
                MetricType::Counter,
            )?;
            for v in &s.versions {
                let version = v.version.to_string();
                ConstCounter::new(v.primary)
                    .encode(family.encode_family(&[("key_version", version.as_str())])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "tes_dual_signatures",
                "Secondary signatures of dual signing during a grace window, per key version (not client requests)",
                None,
                MetricType::Counter,
            )?;
            for v in &s.versions {
                let version = v.version.to_string();
                ConstCounter::new(v.dual)
                    .encode(family.encode_family(&[("key_version", version.as_str())])?)?;
            }
        }
        counter(
            &mut e,
            "tes_revocations",
            "Key versions revoked (key_revoked)",
            s.revocations.len() as u64,
        )?;
        if !s.revocations.is_empty() {
            let mut family = e.encode_descriptor(
                "tes_key_revoked_timestamp_seconds",
                "When each revoked key version was revoked",
                None,
                MetricType::Gauge,
            )?;
            for r in &s.revocations {
                let version = r.version.to_string();
                ConstGauge::new(r.at.as_millis() as f64 / 1000.0)
                    .encode(family.encode_family(&[("key_version", version.as_str())])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "tes_verifications",
                "Signatures verified, per key version and result",
                None,
                MetricType::Counter,
            )?;
            for v in &s.versions {
                let version = v.version.to_string();
                for (result, n) in [("valid", v.verified_valid), ("invalid", v.verified_invalid)] {
                    ConstCounter::new(n).encode(family.encode_family(&[
                        ("key_version", version.as_str()),
                        ("result", result),
                    ])?)?;
                }
            }
        }
        {
            let mut family = e.encode_descriptor(
                "tes_fallbacks",
                "Signing requests that fell back from the active version (key:fallback_vN_to_vM)",
                None,
                MetricType::Counter,
            )?;
            for f in &s.fallbacks {
                let (from, to) = (f.from.to_string(), f.to.to_string());
                ConstCounter::new(f.count).encode(
                    family.encode_family(&[("from", from.as_str()), ("to", to.as_str())])?,
                )?;
            }
        }
        counter(
            &mut e,
            "tes_sign_requests",
            "Signing requests (a dual signature is one request)",
            s.sign_requests,
        )?;
        counter(
            &mut e,
            "tes_rotations",
            "Rotations from one key version to the next",
            s.rotations,
        )?;
        counter(
            &mut e,
            "tes_rollbacks",
            "Rollbacks to the previous key version",
            s.rollbacks,
        )?;
        counter(
            &mut e,
            "tes_rotation_failures",
            "Rotations that could not happen (e.g. expiry with nothing provisioned)",
            s.rotation_failures,
        )?;
        counter(
            &mut e,
            "tes_retirements",
            "Key versions retired after their grace window",
            s.retirements,
        )?;
        counter(
            &mut e,
            "tes_bumps",
            "Versioned-entity bumps (signed manifests)",
            s.bumps,
        )?;
        counter(&mut e, "tes_alerts", "Alerts raised and recorded", s.alerts)?;
        if let Some(d) = s.migration.as_ref().and_then(|m| m.duration_ms()) {
            gauge(
                &mut e,
                "tes_rotation_duration_seconds",
                "Last rotation: rotation signal to first signature under the new version",
                d as f64 / 1000.0,
            )?;
        }
        {
            let mut family = e.encode_descriptor(
                "tes_key_usage_ratio",
                "Share of signing requests served per key version over the recent window (dual signatures and verifications not counted)",
                None,
                MetricType::Gauge,
            )?;
            for u in &s.window.usage {
                let version = u.version.to_string();
                let share = s.window.usage_bp(u.version).map_or(0.0, ratio);
                ConstGauge::new(share)
                    .encode(family.encode_family(&[("key_version", version.as_str())])?)?;
            }
        }
        if let Some(rate) = s.window.fallback_rate_bp() {
            gauge(
                &mut e,
                "tes_fallback_rate_ratio",
                "Fallbacks per signing request over the recent window",
                ratio(rate),
            )?;
        }
        gauge(
            &mut e,
            "tes_window_seconds",
            "Length of the recent window",
            s.window.span_ms as f64 / 1000.0,
        )?;
        Ok(())
    }
}
