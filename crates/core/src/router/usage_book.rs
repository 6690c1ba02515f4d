//! Where an upstream call's tokens go once Bedrock says how many it used.
//! Every call books here, an attempt's own and each further call of an
//! embeddings request alike, so each token is counted once, on the
//! deployment that spent it.

use std::sync::Arc;

use super::group::Deployment;
use crate::metrics::Metrics;
use crate::spend::Bill;
use crate::upstream::TokenUsage;

/// The book of one attempt's calls: its model group and deployment.
#[derive(Clone)]
pub(crate) struct UsageBook {
    metrics: Arc<Metrics>,
    group: String,
    deployment: Arc<Deployment>,
    bill: Option<Bill>,
}

impl UsageBook {
    pub(super) fn new(
        metrics: Arc<Metrics>,
        group: String,
        deployment: Arc<Deployment>,
        bill: Option<Bill>,
    ) -> Self {
        Self {
            metrics,
            group,
            deployment,
            bill,
        }
    }

    /// Books what one call used.
    pub(crate) fn book(&self, usage: &TokenUsage) {
        let config = &self.deployment.config;
        self.metrics.tokens(&self.group, &config.id, usage);
        if let Some(bill) = &self.bill {
            bill.book(&config.id, &config.account, &config.model_id, usage);
        }
    }
}
