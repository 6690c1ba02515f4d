//! Where the deployments of a call's model group run (model, region,
//! account), as `host.describe` answers a policy. Fixed for as long as the
//! config is, so a model group builds its table once and every call shares it.

use std::sync::Arc;

use super::DeploymentInfo;

/// The deployments a call may ask `host.describe` about, by id.
#[derive(Debug, Clone, Default)]
pub struct DeploymentTable(Arc<[(String, DeploymentInfo)]>);

impl DeploymentTable {
    /// A table of `(deployment id, where it runs)`.
    pub fn new(entries: impl IntoIterator<Item = (String, DeploymentInfo)>) -> Self {
        Self(entries.into_iter().collect())
    }

    /// Where `deployment` runs, if it is in the table.
    pub fn describe(&self, deployment: &str) -> Option<&DeploymentInfo> {
        // A model group has a handful of deployments: a scan beats hashing.
        self.0
            .iter()
            .find(|(id, _)| id == deployment)
            .map(|(_, info)| info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_deployments_it_holds_and_no_others() {
        let info = |region: &str| DeploymentInfo {
            model_id: "m".into(),
            region: region.into(),
            account: "acct".into(),
        };
        let table = DeploymentTable::new([
            ("a".to_owned(), info("us-east-1")),
            ("b".to_owned(), info("eu-west-1")),
        ]);
        assert_eq!(table.describe("b").unwrap().region, "eu-west-1");
        assert!(table.describe("c").is_none());
        assert!(DeploymentTable::default().describe("a").is_none());
    }
}
