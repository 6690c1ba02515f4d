//! `[observability.otlp]`: where traces go and how many.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Traces over OTLP/HTTP (protobuf). Off unless this table or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` sets
/// an endpoint. A change needs a restart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP address, such as `http://otel-collector:4318`;
    /// spans are posted to `{endpoint}/v1/traces` unless it already ends so.
    /// Empty: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else traces are off.
    pub endpoint: String,
    /// The share of requests traced, 0 to 1 (a client's sampled
    /// `traceparent` is followed either way). Unset:
    /// `OTEL_TRACES_SAMPLER_ARG`, else 1.
    pub sampling_ratio: Option<f64>,
    /// `service.name`. Unset: `OTEL_SERVICE_NAME`, else `switchyard`.
    pub service_name: Option<String>,
    /// More resource attributes (`deployment.environment`, `k8s.pod.name`,
    /// ...), added to those of `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Headers sent with each export (a collector's auth token, ...).
    pub headers: BTreeMap<String, String>,
    /// Finished spans waiting for export at most; beyond it spans are
    /// dropped (and counted), never waited for.
    pub max_queued_spans: usize,
    /// How long one export may take, in ms.
    pub export_timeout_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            sampling_ratio: None,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            headers: BTreeMap::new(),
            max_queued_spans: 4_096,
            export_timeout_ms: 10_000,
        }
    }
}

/// What the config and the `OTEL_*` variables say together.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Where spans are posted (the full `/v1/traces` URL).
    pub traces_url: String,
    pub sampling_ratio: f64,
    pub service_name: String,
    pub resource_attributes: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub max_queued_spans: usize,
    pub export_timeout_ms: u64,
}

impl OtlpConfig {
    /// The settings in force, reading the standard `OTEL_*` variables
    /// through `env` for what the config leaves unset; `None`: traces are
    /// off. An error names the setting that is wrong.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, (String, String)> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            && self.endpoint.is_empty()
        {
            return Ok(None);
        }
        let traces_url = if !self.endpoint.is_empty() {
            traces_url(&self.endpoint)
        } else if let Some(url) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            // The signal's own variable is the whole URL, as the spec says.
            url
        } else if let Some(base) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            traces_url(&base)
        } else {
            return Ok(None);
        };
        if !(traces_url.starts_with("http://") || traces_url.starts_with("https://")) {
            return Err((
                "observability.otlp.endpoint".into(),
                format!("`{traces_url}` is not an http:// or https:// URL (OTLP over HTTP; port 4318 on a collector)"),
            ));
        }
        if let Some(protocol) = set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            if protocol != "http/protobuf" {
                return Err((
                    "OTEL_EXPORTER_OTLP_PROTOCOL".into(),
                    format!("`{protocol}` is not supported; Switchyard exports http/protobuf"),
                ));
            }
        }
        let sampling_ratio = match self.sampling_ratio {
            Some(r) => r,
            None => match set("OTEL_TRACES_SAMPLER_ARG") {
                Some(v) => v.trim().parse().map_err(|_| {
                    (
                        "OTEL_TRACES_SAMPLER_ARG".to_owned(),
                        format!("`{v}` is not a number from 0 to 1"),
                    )
                })?,
                None => 1.0,
            },
        };
        if !(0.0..=1.0).contains(&sampling_ratio) {
            return Err((
                "observability.otlp.sampling_ratio".into(),
                format!("{sampling_ratio} is not between 0 and 1"),
            ));
        }
        let mut resource_attributes = BTreeMap::new();
        if let Some(pairs) = set("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in pairs.split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    resource_attributes.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
        }
        resource_attributes.extend(self.resource_attributes.clone());
        let service_name = self
            .service_name
            .clone()
            .or_else(|| set("OTEL_SERVICE_NAME"))
            .or_else(|| resource_attributes.get("service.name").cloned())
            .unwrap_or_else(|| "switchyard".to_owned());
        if self.max_queued_spans == 0 {
            return Err((
                "observability.otlp.max_queued_spans".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(Some(Resolved {
            traces_url,
            sampling_ratio,
            service_name,
            resource_attributes,
            headers: self.headers.clone(),
            max_queued_spans: self.max_queued_spans,
            export_timeout_ms: self.export_timeout_ms.max(1),
        }))
    }
}

fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_without_an_endpoint_anywhere() {
        assert_eq!(OtlpConfig::default().resolve(env(&[])), Ok(None));
    }

    #[test]
    fn the_config_wins_and_the_variables_fill_in() {
        let config = OtlpConfig {
            endpoint: "http://collector:4318/".into(),
            ..OtlpConfig::default()
        };
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318"),
            ("OTEL_SERVICE_NAME", "gateway-eu"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, team=ml",
            ),
        ];
        let resolved = config.resolve(env(&vars)).unwrap().unwrap();
        assert_eq!(resolved.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(resolved.service_name, "gateway-eu");
        assert_eq!(resolved.sampling_ratio, 0.25);
        assert_eq!(resolved.resource_attributes["team"], "ml");
    }

    #[test]
    fn the_variables_alone_turn_traces_on() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        let resolved = OtlpConfig::default().resolve(env(&base)).unwrap().unwrap();
        assert_eq!(resolved.traces_url, "http://c:4318/v1/traces");
        assert_eq!(resolved.service_name, "switchyard");
        let whole = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")];
        let resolved = OtlpConfig::default().resolve(env(&whole)).unwrap().unwrap();
        assert_eq!(resolved.traces_url, "http://c:4318/custom");
    }

    #[test]
    fn bad_settings_are_named() {
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let (key, _) = OtlpConfig::default().resolve(env(&grpc)).unwrap_err();
        assert_eq!(key, "OTEL_EXPORTER_OTLP_PROTOCOL");
        let ratio = OtlpConfig {
            endpoint: "http://c:4318".into(),
            sampling_ratio: Some(1.5),
            ..OtlpConfig::default()
        };
        let (key, _) = ratio.resolve(env(&[])).unwrap_err();
        assert_eq!(key, "observability.otlp.sampling_ratio");
        let scheme = OtlpConfig {
            endpoint: "collector:4318".into(),
            ..OtlpConfig::default()
        };
        assert!(scheme.resolve(env(&[])).is_err());
    }
}
