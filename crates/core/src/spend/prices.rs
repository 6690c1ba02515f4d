//! What Bedrock charges per token, by model: the on-demand prices of the
//! models the README names (US regions, December 2026), which the config's
//! `[prices."<model id>"]` tables override and extend.
//!
//! Prices are held as micro-USD per million tokens and costs as nano-USD,
//! both integers: a team's spend is summed by Redis's `HINCRBY` across
//! instances, and floats summed that way drift from the bill.

use std::collections::{BTreeMap, HashMap};

pub use crate::config::PriceConfig;
use crate::upstream::TokenUsage;

/// One model's prices, in micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Price {
    /// What `usage` costs, in nano-USD (rounded down per kind).
    pub fn cost_nano_usd(&self, usage: &TokenUsage) -> u64 {
        // tokens × µUSD per 1M tokens / 1000 = nUSD.
        let of = |tokens: u64, price: u64| (u128::from(tokens) * u128::from(price) / 1000) as u64;
        of(usage.input, self.input)
            + of(usage.output, self.output)
            + of(usage.cache_read, self.cache_read)
            + of(usage.cache_write, self.cache_write)
    }
}

/// The price of a `[prices."<model id>"]` table in micro-USD per million
/// tokens, or why it is not one.
fn price_of(config: &PriceConfig) -> Result<Price, String> {
    if let Some(problem) = config.problem() {
        return Err(problem);
    }
    let micro = |usd: f64| (usd * 1_000_000.0).round() as u64;
    Ok(Price {
        input: micro(config.input),
        output: micro(config.output),
        cache_read: micro(config.cache_read),
        cache_write: micro(config.cache_write),
    })
}

/// (model id, input, output, cache read, cache write), USD per 1M tokens.
const ON_DEMAND: &[(&str, f64, f64, f64, f64)] = &[
    (
        "anthropic.claude-opus-4-5-20251101-v1:0",
        5.0,
        25.0,
        0.50,
        6.25,
    ),
    (
        "anthropic.claude-opus-4-1-20250805-v1:0",
        15.0,
        75.0,
        1.50,
        18.75,
    ),
    (
        "anthropic.claude-opus-4-20250514-v1:0",
        15.0,
        75.0,
        1.50,
        18.75,
    ),
    (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        3.0,
        15.0,
        0.30,
        3.75,
    ),
    (
        "anthropic.claude-sonnet-4-20250514-v1:0",
        3.0,
        15.0,
        0.30,
        3.75,
    ),
    (
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        3.0,
        15.0,
        0.30,
        3.75,
    ),
    (
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        3.0,
        15.0,
        0.30,
        3.75,
    ),
    (
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        3.0,
        15.0,
        0.0,
        0.0,
    ),
    (
        "anthropic.claude-haiku-4-5-20251001-v1:0",
        1.0,
        5.0,
        0.10,
        1.25,
    ),
    (
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        0.80,
        4.0,
        0.08,
        1.0,
    ),
    (
        "anthropic.claude-3-haiku-20240307-v1:0",
        0.25,
        1.25,
        0.0,
        0.0,
    ),
    ("amazon.nova-micro-v1:0", 0.035, 0.14, 0.00875, 0.0),
    ("amazon.nova-lite-v1:0", 0.06, 0.24, 0.015, 0.0),
    ("amazon.nova-pro-v1:0", 0.80, 3.20, 0.20, 0.0),
    ("amazon.titan-embed-text-v2:0", 0.02, 0.0, 0.0, 0.0),
    ("cohere.embed-english-v3", 0.10, 0.0, 0.0, 0.0),
    ("cohere.embed-multilingual-v3", 0.10, 0.0, 0.0, 0.0),
    ("meta.llama3-1-8b-instruct-v1:0", 0.22, 0.22, 0.0, 0.0),
    ("meta.llama3-1-70b-instruct-v1:0", 0.72, 0.72, 0.0, 0.0),
];

/// Prices by model id.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    by_model: HashMap<String, Price>,
}

impl Default for PriceTable {
    /// The built-in on-demand prices.
    fn default() -> Self {
        let by_model = ON_DEMAND
            .iter()
            .map(|&(model, input, output, cache_read, cache_write)| {
                let price = price_of(&PriceConfig {
                    input,
                    output,
                    cache_read,
                    cache_write,
                })
                .expect("the built-in prices are valid");
                (model.to_owned(), price)
            })
            .collect();
        Self { by_model }
    }
}

impl PriceTable {
    /// The built-in prices, overridden and extended by the config's
    /// `[prices]`; an invalid price is named by its model id.
    pub fn with(overrides: &BTreeMap<String, PriceConfig>) -> Result<Self, (String, String)> {
        let mut table = Self::default();
        for (model, config) in overrides {
            let price = price_of(config).map_err(|problem| (model.clone(), problem))?;
            table.by_model.insert(base_model(model).to_owned(), price);
        }
        Ok(table)
    }

    /// The price of `model`: a model id, an inference profile (`us.`,
    /// `eu.`, `global.`, ...) or an ARN of either; `None` when unknown.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.by_model.get(base_model(model))
    }

    /// What `usage` on `model` costs in nano-USD; 0 for a model without a
    /// price (it is still counted in tokens).
    pub fn cost_nano_usd(&self, model: &str, usage: &TokenUsage) -> u64 {
        self.price(model).map_or(0, |p| p.cost_nano_usd(usage))
    }
}

/// The foundation model a model id, profile or ARN names: the ARN's
/// resource name, without a cross-region profile's geography prefix
/// (profiles cost what their model does on demand).
fn base_model(model: &str) -> &str {
    let name = model.rsplit_once('/').map_or(model, |(_, name)| name);
    for geography in [
        "us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.",
    ] {
        if let Some(base) = name.strip_prefix(geography) {
            return base;
        }
    }
    name
}

/// Nano-USD as USD, for reports.
pub fn usd(nano: u64) -> f64 {
    nano as f64 / 1e9
}

/// USD as nano-USD, for budgets (negative or not finite: 0).
pub fn nano_usd(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    #[test]
    fn a_profile_or_an_arn_costs_what_its_model_does() {
        let table = PriceTable::default();
        let sonnet = table
            .price("anthropic.claude-sonnet-4-5-20250929-v1:0")
            .unwrap();
        for id in [
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-5-20250929-v1:0",
        ] {
            assert_eq!(table.price(id), Some(sonnet), "{id}");
        }
        assert_eq!(table.price("someone.unknown-v1"), None);
    }

    #[test]
    fn each_kind_of_token_is_priced_apart() {
        let table = PriceTable::default();
        // Sonnet 4.5: $3 in, $15 out, $0.30 cache read, $3.75 cache write.
        let cost = table.cost_nano_usd(
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            &usage(1_000, 100, 10_000, 2_000),
        );
        assert_eq!(cost, 3_000_000 + 1_500_000 + 3_000_000 + 7_500_000);
        assert_eq!(usd(cost), 0.015);
        // A tiny price still adds up without rounding every token away.
        let micro = table.cost_nano_usd("amazon.nova-micro-v1:0", &usage(1, 0, 0, 0));
        assert_eq!(micro, 35);
        assert_eq!(table.cost_nano_usd("unknown", &usage(1_000, 0, 0, 0)), 0);
    }

    #[test]
    fn the_config_overrides_and_extends_the_table() {
        let overrides = BTreeMap::from([
            (
                "anthropic.claude-sonnet-4-5-20250929-v1:0".to_owned(),
                PriceConfig {
                    input: 2.5,
                    output: 12.5,
                    cache_read: 0.25,
                    cache_write: 3.125,
                },
            ),
            (
                "us.acme.private-model-v1".to_owned(),
                PriceConfig {
                    input: 1.0,
                    output: 2.0,
                    cache_read: 0.0,
                    cache_write: 0.0,
                },
            ),
        ]);
        let table = PriceTable::with(&overrides).unwrap();
        assert_eq!(
            table
                .price("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
                .unwrap()
                .input,
            2_500_000
        );
        assert_eq!(
            table.price("acme.private-model-v1").unwrap().output,
            2_000_000
        );
        let bad = BTreeMap::from([(
            "m".to_owned(),
            PriceConfig {
                input: -1.0,
                output: 0.0,
                cache_read: 0.0,
                cache_write: 0.0,
            },
        )]);
        let (model, problem) = PriceTable::with(&bad).unwrap_err();
        assert_eq!(model, "m");
        assert!(problem.contains("`input`"), "{problem}");
    }
}
