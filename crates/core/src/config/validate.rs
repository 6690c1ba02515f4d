//! The checks a config must pass that its types alone cannot express.

use std::collections::{HashMap, HashSet};

use super::{invalid, Config, ConfigError, DeploymentConfig};

impl Config {
    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((key, problem)) = self.state.problem() {
            return Err(invalid(key, problem));
        }
        if let Some((key, problem)) = self.http.problem() {
            return Err(invalid(key, problem));
        }
        if let Some((key, problem)) = self
            .jobs
            .as_ref()
            .and_then(|j| j.problem(self.state.backend == crate::state::BackendKind::Redis))
        {
            return Err(invalid(key, problem));
        }
        let ids = self.validate_deployments()?;
        self.validate_accounts()?;
        self.validate_model_groups(&ids)?;
        self.validate_access()?;
        self.validate_runtime()
    }

    /// Deployment ids are unique and non-empty, endpoints are URLs, and
    /// deployments sharing a quota pool declare one quota. Returns the ids.
    fn validate_deployments(&self) -> Result<HashSet<&str>, ConfigError> {
        let mut ids = HashSet::new();
        let mut pools: HashMap<String, &DeploymentConfig> = HashMap::new();
        for (i, d) in self.deployments.iter().enumerate() {
            let key = format!("deployments[{i}]");
            if d.id.trim().is_empty() {
                return Err(invalid(format!("{key}.id"), "must not be empty"));
            }
            if !ids.insert(d.id.as_str()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("deployment id `{}` is used twice", d.id),
                ));
            }
            if d.model_id.trim().is_empty() {
                return Err(invalid(format!("{key}.model_id"), "must not be empty"));
            }
            if let Some(url) = &d.endpoint_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        format!("{key}.endpoint_url"),
                        format!("`{url}` must start with http:// or https://"),
                    ));
                }
            }
            if let Some(first) = pools.insert(d.quota_pool(), d) {
                if (first.rpm, first.tpm) != (d.rpm, d.tpm) {
                    return Err(invalid(
                        format!("{key}.rpm"),
                        format!(
                            "`{}` and `{}` share one Bedrock quota (account `{}`, region `{}`, \
                             model `{}`) but declare different rpm/tpm; give both the same",
                            first.id, d.id, d.account, d.region, d.model_id
                        ),
                    ));
                }
            }
        }
        Ok(ids)
    }

    /// Accounts are named once, each by some deployment, and their budgets
    /// are above zero.
    fn validate_accounts(&self) -> Result<(), ConfigError> {
        let used: HashSet<&str> = self
            .deployments
            .iter()
            .map(|d| d.account.as_str())
            .collect();
        let mut named = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let key = format!("accounts[{i}]");
            if !named.insert(a.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("account `{}` is listed twice", a.name),
                ));
            }
            if !used.contains(a.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "no deployment has account = \"{}\" (accounts of deployments: {})",
                        a.name,
                        sorted(&used)
                    ),
                ));
            }
            if let Some(field) = a.zero_budget() {
                return Err(invalid(
                    format!("{key}.{field}"),
                    "must be at least 1 (leave it out for no budget)",
                ));
            }
        }
        Ok(())
    }

    /// Groups are named once, list known deployments once each, and name
    /// each policy one way.
    fn validate_model_groups(&self, ids: &HashSet<&str>) -> Result<(), ConfigError> {
        if self.model_groups.is_empty() {
            return Err(invalid(
                "model_groups",
                "at least one model group is needed",
            ));
        }
        let mut names = HashSet::new();
        for (i, g) in self.model_groups.iter().enumerate() {
            let key = format!("model_groups[{i}]");
            if !names.insert(g.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("model group `{}` is defined twice", g.name),
                ));
            }
        }
        // An alias names one group: not another's name or alias.
        let mut aliases = HashSet::new();
        for (i, g) in self.model_groups.iter().enumerate() {
            for alias in &g.aliases {
                let key = format!("model_groups[{i}].aliases");
                if alias.is_empty() {
                    return Err(invalid(key, "an alias must not be empty"));
                }
                if names.contains(alias.as_str()) {
                    return Err(invalid(
                        key,
                        format!("`{alias}` is already a model group's name"),
                    ));
                }
                if !aliases.insert(alias.as_str()) {
                    return Err(invalid(key, format!("alias `{alias}` is used twice")));
                }
            }
        }
        for (i, g) in self.model_groups.iter().enumerate() {
            let key = format!("model_groups[{i}]");
            if g.deployments.is_empty() {
                return Err(invalid(
                    format!("{key}.deployments"),
                    "must list at least one deployment",
                ));
            }
            let mut seen = HashSet::new();
            for d in &g.deployments {
                if !ids.contains(d.as_str()) {
                    return Err(invalid(
                        format!("{key}.deployments"),
                        format!("unknown deployment `{d}`"),
                    ));
                }
                if !seen.insert(d.as_str()) {
                    return Err(invalid(
                        format!("{key}.deployments"),
                        format!("deployment `{d}` is listed twice"),
                    ));
                }
            }
            for (kind, slot) in [
                ("selection", &g.policies.selection),
                ("cooldown", &g.policies.cooldown),
                ("fallback", &g.policies.fallback),
            ] {
                let key = format!("{key}.policies.{kind}");
                match (&slot.name, &slot.path) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(key, "set either `name` or `path`, not both"))
                    }
                    (None, None) => return Err(invalid(key, "set `name` or `path`")),
                    _ => {}
                }
                if !slot.params.is_object() {
                    return Err(invalid(format!("{key}.params"), "must be a table"));
                }
            }
        }
        Ok(())
    }

    /// Teams' limits and the price table.
    fn validate_spend(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, team) in self.teams.iter().enumerate() {
            if let Some(problem) = crate::keys::record::name_problem("name", &team.name) {
                return Err(invalid(format!("teams[{i}].name"), problem));
            }
            if !names.insert(team.name.as_str()) {
                return Err(invalid(format!("teams[{i}].name"), "is used twice"));
            }
            if let Some(problem) = team.limits.team_problem() {
                return Err(invalid(format!("teams[{i}].limits"), problem));
            }
        }
        for (model, price) in &self.prices {
            if let Some(problem) = price.problem() {
                return Err(invalid(format!("prices.\"{model}\""), problem));
            }
        }
        Ok(())
    }

    /// API keys, the admin token and who may read the stats.
    fn validate_access(&self) -> Result<(), ConfigError> {
        let mut keys = HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                return Err(invalid(
                    format!("api_keys[{i}].key"),
                    "must be at least 16 characters",
                ));
            }
            if !keys.insert(k.key.as_str()) {
                return Err(invalid(format!("api_keys[{i}].key"), "is used twice"));
            }
            if k.user.is_empty() {
                return Err(invalid(format!("api_keys[{i}].user"), "must not be empty"));
            }
            if self.admin.token.as_deref() == Some(k.key.as_str()) {
                return Err(invalid(
                    format!("api_keys[{i}].key"),
                    "is the admin token; use another",
                ));
            }
            if let Some(problem) = k
                .team
                .as_deref()
                .and_then(|t| crate::keys::record::name_problem("team", t))
            {
                return Err(invalid(format!("api_keys[{i}].team"), problem));
            }
        }
        self.validate_spend()?;
        if self.observability.require_key && self.api_keys.is_empty() && self.admin.token.is_none()
        {
            return Err(invalid(
                "observability.require_key",
                "needs [[api_keys]] or an [admin] token to accept",
            ));
        }
        // The config's own settings; the `OTEL_*` variables are checked
        // when the gateway starts.
        if let Err((key, problem)) = self.observability.otlp.resolve(|_| None) {
            return Err(invalid(key, problem));
        }
        if self.admin.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin.token", "must be at least 16 characters"));
        }
        Ok(())
    }

    /// The policy runtime's limits and the request size limit.
    fn validate_runtime(&self) -> Result<(), ConfigError> {
        let rt = &self.policy_runtime;
        if rt.call_deadline_us == 0 {
            return Err(invalid(
                "policy_runtime.call_deadline_us",
                "must be greater than 0",
            ));
        }
        if rt.memory_limit_mib == 0 || rt.memory_limit_mib > 4096 {
            return Err(invalid(
                "policy_runtime.memory_limit_mib",
                "must be between 1 and 4096",
            ));
        }
        if rt.max_concurrent_calls == 0 {
            return Err(invalid(
                "policy_runtime.max_concurrent_calls",
                "must be greater than 0",
            ));
        }
        if !(0.0..=1.0).contains(&rt.rollback_fault_ratio) {
            return Err(invalid(
                "policy_runtime.rollback_fault_ratio",
                "must be between 0 and 1",
            ));
        }
        if rt.rollback_window_calls == 0 {
            return Err(invalid(
                "policy_runtime.rollback_window_calls",
                "must be greater than 0",
            ));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be greater than 0"));
        }
        Ok(())
    }
}

/// `names`, sorted and quoted, for a message.
fn sorted(names: &HashSet<&str>) -> String {
    let mut names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    names.sort();
    names.join(", ")
}
