//! Where a deployment's AWS credentials come from: aws-config's providers,
//! as operators hand credentials to a process (environment, the shared
//! config and credentials files with SSO, `role_arn`/`source_profile` and
//! `credential_process`, web identity for IRSA, the ECS container endpoint,
//! EC2's IMDS), optionally through an STS AssumeRole of the deployment's own,
//! so one process can rotate several accounts.
//!
//! Both upstream paths read one cache per deployment: the signed path asks
//! it before every call, and the SDK client (streams) uses it as its
//! provider. Credentials are refreshed shortly before they expire, by one
//! caller at a time, whose result every caller waiting shares; a failure to
//! get them is the deployment's failure, remembered for a moment so that
//! the requests meanwhile fail over at once instead of asking a provider
//! that may take seconds to fail, one after another.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::sts::AssumeRoleProvider;
use aws_config::Region;
use aws_credential_types::provider::{
    error::CredentialsError, ProvideCredentials, SharedCredentialsProvider,
};
use aws_credential_types::Credentials;
use tokio::sync::{Mutex, OnceCell};

use crate::config::{AssumeRoleConfig, CredentialsConfig};

/// Credentials are renewed this long before they expire, so none is
/// signed into a request that reaches Bedrock after its end.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(10);

/// While a refresh is failing, the keys in hand are still signed with
/// until this long before they expire (a request signed later could reach
/// Bedrock after their end).
const LAST_USE_BEFORE_EXPIRY: Duration = Duration::from_secs(2);

/// After a failed refresh, the provider is not asked again for this long:
/// requests sign with the keys in hand, or, with none, fail at once with the
/// same error. A provider that is down (STS, IMDS timing out) is not asked
/// once per request.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(2);

/// One deployment's credentials, cached.
#[derive(Debug, Clone)]
pub struct DeploymentCredentials {
    inner: Arc<Cache>,
}

#[derive(Debug)]
struct Cache {
    source: Source,
    current: std::sync::RwLock<Option<Credentials>>,
    /// One refresh at a time; the others wait for its result, unless keys
    /// in hand are still good.
    refreshing: Mutex<()>,
    /// When a refresh last failed, and why.
    failed: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// The provider behind the cache, built on first use: aws-config's default
/// chain and AssumeRole are assembled asynchronously.
#[derive(Debug)]
struct Source {
    config: CredentialsConfig,
    assume_role: Option<AssumeRoleConfig>,
    region: String,
    provider: OnceCell<SharedCredentialsProvider>,
}

impl DeploymentCredentials {
    /// Credentials from `config`, through `assume_role` when set, for a
    /// deployment in `region`. Nothing is read until the first call.
    pub fn new(
        config: &CredentialsConfig,
        assume_role: Option<&AssumeRoleConfig>,
        region: &str,
    ) -> Self {
        Self {
            inner: Arc::new(Cache {
                source: Source {
                    config: config.clone(),
                    assume_role: assume_role.cloned(),
                    region: region.to_owned(),
                    provider: OnceCell::new(),
                },
                current: std::sync::RwLock::new(None),
                refreshing: Mutex::new(()),
                failed: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Credentials good for a while yet: the cached ones, or fresh ones.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        if let Some(fresh) = self.cached() {
            return Ok(fresh);
        }
        // Keys in hand that are still good sign this request while another
        // caller refreshes, or while a failed refresh waits to be retried:
        // a slow or failing provider must not hold requests up.
        let in_hand = self.valid_for(LAST_USE_BEFORE_EXPIRY);
        if let Some(failure) = self.recent_failure() {
            return in_hand.ok_or(failure);
        }
        let _turn = match (self.inner.refreshing.try_lock(), &in_hand) {
            (Ok(turn), _) => turn,
            (Err(_), Some(keys)) => return Ok(keys.clone()),
            (Err(_), None) => self.inner.refreshing.lock().await,
        };
        // The refresh this caller waited for decides: its keys, or its
        // failure (the provider is not asked again at once).
        if let Some(fresh) = self.cached() {
            return Ok(fresh);
        }
        if let Some(failure) = self.recent_failure() {
            return in_hand.ok_or(failure);
        }
        let provider = self.inner.source.provider().await;
        match provider.provide_credentials().await {
            Ok(credentials) => {
                *self.inner.current.write().expect("credentials poisoned") =
                    Some(credentials.clone());
                *self.inner.failed.lock().expect("credentials poisoned") = None;
                Ok(credentials)
            }
            Err(e) => {
                let why = crate::error_chain::render(&e);
                *self.inner.failed.lock().expect("credentials poisoned") =
                    Some((std::time::Instant::now(), why));
                // A refresh ahead of expiry that fails (STS or IMDS briefly
                // away) leaves the keys in hand, good until shortly before
                // they expire.
                in_hand.ok_or(e)
            }
        }
    }

    /// The failure of a refresh less than [`RETRY_REFRESH_AFTER`] ago.
    fn recent_failure(&self) -> Option<CredentialsError> {
        let failed = self.inner.failed.lock().expect("credentials poisoned");
        failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RETRY_REFRESH_AFTER)
            .map(|(_, why)| CredentialsError::provider_error(why.clone()))
    }

    /// The credentials in hand, unless they expire within the refresh margin.
    fn cached(&self) -> Option<Credentials> {
        self.valid_for(REFRESH_BEFORE_EXPIRY)
    }

    /// The credentials in hand if they are still good `margin` from now.
    fn valid_for(&self, margin: Duration) -> Option<Credentials> {
        let current = self.inner.current.read().expect("credentials poisoned");
        current
            .as_ref()
            .filter(|c| {
                c.expiry()
                    .is_none_or(|expiry| SystemTime::now() + margin < expiry)
            })
            .cloned()
    }
}

impl Source {
    async fn provider(&self) -> &SharedCredentialsProvider {
        self.provider
            .get_or_init(|| async {
                let region = Region::new(self.region.clone());
                let base = base_provider(&self.config, region.clone()).await;
                match &self.assume_role {
                    None => base,
                    Some(role) => {
                        let mut builder = AssumeRoleProvider::builder(role.role_arn.clone())
                            .region(region)
                            .session_name(role.session_name.clone());
                        if let Some(id) = &role.external_id {
                            builder = builder.external_id(id.clone());
                        }
                        SharedCredentialsProvider::new(builder.build_from_provider(base).await)
                    }
                }
            })
            .await
    }
}

async fn base_provider(config: &CredentialsConfig, region: Region) -> SharedCredentialsProvider {
    match config {
        CredentialsConfig::Chain => SharedCredentialsProvider::new(
            DefaultCredentialsChain::builder()
                .region(region)
                .build()
                .await,
        ),
        CredentialsConfig::Env => {
            SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new())
        }
        CredentialsConfig::Profile { name } => SharedCredentialsProvider::new(
            ProfileFileCredentialsProvider::builder()
                .profile_name(name)
                .build(),
        ),
        CredentialsConfig::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => SharedCredentialsProvider::new(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.clone(),
            None,
            "switchyard-config",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str) -> CredentialsConfig {
        CredentialsConfig::Static {
            access_key_id: id.into(),
            secret_access_key: "secret".into(),
            session_token: None,
        }
    }

    #[tokio::test]
    async fn static_keys_come_back_from_the_cache() {
        let credentials = DeploymentCredentials::new(&config("AKIDSTATIC"), None, "us-east-1");
        assert_eq!(
            credentials.get().await.unwrap().access_key_id(),
            "AKIDSTATIC"
        );
        assert_eq!(credentials.cached().unwrap().access_key_id(), "AKIDSTATIC");
    }

    #[tokio::test]
    async fn credentials_about_to_expire_are_not_served_from_the_cache() {
        let credentials = DeploymentCredentials::new(&config("AKIDSTATIC"), None, "us-east-1");
        let soon = Credentials::new(
            "AKIDOLD",
            "secret",
            None,
            Some(SystemTime::now() + Duration::from_secs(5)),
            "test",
        );
        *credentials.inner.current.write().unwrap() = Some(soon);
        assert!(credentials.cached().is_none());
        assert_eq!(
            credentials.get().await.unwrap().access_key_id(),
            "AKIDSTATIC"
        );
    }
}
