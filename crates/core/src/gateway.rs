//! Assembles a running gateway from a config: loads the policies, builds the
//! client pool, serves the API, and watches policy files.

mod mirror;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use tokio::net::TcpListener;

use crate::admission::{DeploymentAdmission, FairQueue};
use crate::api::{self, AppState};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError, CredentialsConfig};
use crate::edge::{self, HttpConfig};
use crate::health::DeploymentHealth;
use crate::jobs::JobRunner;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::policy::{
    KvStore, LoadError, PolicyKind, PolicyRuntime, PolicySlot, PolicyVersion, RollbackRule,
};
use crate::router::{Deployment, GroupSlots, ModelGroup, Router};
use crate::service::Service;
use crate::spend::counters::Counters;
use crate::spend::prices::PriceTable;
use crate::spend::Spending;
use crate::state::redis::LazyConnection;
use crate::state::{self, BackendKind, ChangeSink, QuotaSpec, SlotId, StateBackend, StateError};
use crate::swap::{self, ReloadReport, SwapError, Swapper};
use crate::upstream::{ConnectionPools, Upstream, UpstreamError};
use mirror::GatewayMirror;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A policy named in the config could not be loaded.
    #[error("model group `{group}`, {kind} policy `{policy}`")]
    Policy {
        group: String,
        kind: PolicyKind,
        policy: String,
        source: Box<SwapError>,
    },
    /// A deployment's client could not be built (credentials, endpoint).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The policy engine could not start.
    #[error(transparent)]
    Engine(LoadError),
    /// The shared state backend could not start.
    #[error("the shared state backend could not start")]
    State(#[source] StateError),
    /// A `[prices]` entry is not a price.
    #[error("prices.\"{model}\": {problem}")]
    Prices { model: String, problem: String },
    /// The job store could not be opened.
    #[error("async jobs could not start")]
    Jobs(#[source] crate::jobs::StoreError),
}

/// The books of spend and the key store: in Redis when state is shared,
/// else in this process and the embedded store.
fn spend_books(
    config: &Config,
    shared: &Arc<dyn StateBackend>,
    clock: &SharedClock,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Spending>, KeyStore), StartError> {
    let prefix = config.state.key_prefix.clone();
    let redis = match (&config.state.backend, &config.state.url) {
        (BackendKind::Redis, Some(url)) => {
            // Budget reads and key loads are rarer than quota calls and
            // may take a little longer than they may.
            let timeout = Duration::from_millis(config.state.timeout_ms.max(250));
            let conn = LazyConnection::new(url, timeout)
                .map_err(|source| StartError::State(StateError::bad_url(url, source)))?;
            Some(Arc::new(conn))
        }
        _ => None,
    };
    let counters = match &redis {
        Some(conn) => Counters::redis(conn.clone()),
        None => Counters::memory(),
    };
    let key_store = match redis {
        Some(conn) => KeyStore::Redis {
            conn,
            prefix: prefix.clone(),
        },
        None => KeyStore::Embedded(
            config
                .key_store
                .data_dir
                .clone()
                .or_else(|| crate::config::JobsConfig::default().dir()),
        ),
    };
    let prices = PriceTable::with(&config.prices)
        .map_err(|(model, problem)| StartError::Prices { model, problem })?;
    let quotas: Arc<dyn crate::state::QuotaBooks> = shared.clone();
    let spending = Spending::new(
        prices,
        counters,
        &prefix,
        quotas,
        clock.clone(),
        metrics.clone(),
    );
    Ok((Arc::new(spending), key_store))
}

/// How often instances look for a change of the shared key store.
const KEY_STORE_POLL: Duration = Duration::from_millis(250);

/// Samples the status page's history every [`crate::history::INTERVAL_MS`] until
/// the gateway is gone.
async fn keep_history(state: std::sync::Weak<AppState>) {
    let mut every = tokio::time::interval(Duration::from_millis(crate::history::INTERVAL_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for sample in 0u64.. {
        every.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let router = state.service.router();
        let queue = state.service.queue().stats();
        let now = router.clock().now_ms();
        state.history.sample(router, &queue, now);
        if sample % crate::history::SPEND_EVERY == 0 {
            for team in api::keys::all_teams(&state) {
                let subject = format!("team:{}", team.name);
                // A reading the books cannot give now is left out.
                let Ok(periods) = state.service.spending().spent(&subject).await else {
                    continue;
                };
                let today = periods
                    .iter()
                    .find(|(period, _, _)| matches!(period, crate::spend::period::Period::Day));
                if let Some((_, _, nano)) = today {
                    let usd = crate::spend::prices::usd(*nano);
                    state.history.record_spend(&team.name, now, usd);
                }
            }
        }
    }
}

/// Loads the key store's keys and teams into the access rules: once for
/// the embedded store (the admin API reloads it after each change), and
/// whenever its version moves for a shared one, until the gateway is gone.
async fn follow_key_store(state: std::sync::Weak<AppState>) {
    let mut seen: Option<u64> = None;
    let mut failing = false;
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        let changed = match state.key_store.version().await {
            Ok(version) => seen != Some(version) || !state.key_store.is_shared(),
            Err(_) => false,
        };
        if changed {
            match state.key_store.load().await {
                Ok(stored) => {
                    seen = Some(stored.version);
                    state.access.apply_stored(stored);
                    failing = false;
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %crate::error_chain::render(&e), "the key store could not be read; the keys last read stay in force");
                }
                Err(_) => {}
            }
        }
        let shared = state.key_store.is_shared();
        drop(state);
        if !shared && !failing {
            return;
        }
        tokio::time::sleep(KEY_STORE_POLL).await;
    }
}

/// Where deployments without an `endpoint_url` go.
#[derive(Debug, Clone)]
pub enum Upstreams {
    /// AWS's own endpoints, with each deployment's credentials.
    Aws,
    /// A simulator at this base URL, with placeholder credentials.
    Simulator(String),
}

/// A gateway ready to serve.
pub struct Gateway {
    state: Arc<AppState>,
    max_body_bytes: usize,
    http: HttpConfig,
}

impl Gateway {
    /// Loads everything `config` names. Time for routing state comes from `clock`.
    pub fn build(
        config: &Config,
        clock: SharedClock,
        upstreams: &Upstreams,
    ) -> Result<Self, StartError> {
        let runtime = PolicyRuntime::new(&config.policy_runtime, clock.clone())
            .map_err(StartError::Engine)?;
        let quotas: Vec<QuotaSpec> = config
            .deployments
            .iter()
            .map(|d| QuotaSpec {
                deployment: d.id.clone(),
                pool: d.quota_pool(),
                rpm: d.rpm.map(u64::from),
                tpm: d.tpm.map(u64::from),
            })
            .collect();
        let shared = state::backend(&config.state, &quotas, config.admission.quota_window_ms())
            .map_err(StartError::State)?;
        let deployments = build_deployments(config, upstreams, &quotas, &shared)?;
        let (groups, kv_stores) = load_groups(config, &runtime, &clock, &shared, &deployments)?;
        let queue = FairQueue::shared(config.admission.queue.clone(), shared.clone());
        let mirror: Arc<dyn ChangeSink> = Arc::new(GatewayMirror {
            clock: clock.clone(),
            deployments: deployments.clone(),
            kv: kv_stores,
            queue: queue.clone(),
        });
        shared.attach(&mirror);
        let jobs = match &config.jobs {
            Some(jobs) => {
                Some(crate::jobs::Jobs::open(jobs, &config.state).map_err(StartError::Jobs)?)
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let (spending, key_store) = spend_books(config, &shared, &clock, &metrics)?;
        let router = Router::new(
            groups,
            clock,
            config.limits.max_attempts,
            config.policy_runtime.seed,
            metrics,
        )
        .with_aliases(config.model_groups.iter().flat_map(|g| {
            g.aliases
                .iter()
                .map(|alias| (alias.clone(), g.name.clone()))
        }));
        let gateway = Self {
            state: Arc::new(AppState {
                service: Service::new(router, spending, queue, config.admission.max_wait_ms),
                key_store,
                access: api::access::Access::new(config),
                shared_state: shared,
                state_mirror: mirror,
                runtime,
                running_config: std::sync::Mutex::new(config.clone()),
                config_path: std::sync::Mutex::new(None),
                reloading: tokio::sync::Mutex::new(()),
                coalescer: api::coalesce::Coalescer::default(),
                coalescing_groups: config
                    .model_groups
                    .iter()
                    .filter(|g| g.coalesce)
                    .map(|g| g.name.clone())
                    .collect(),
                jobs,
                history: crate::history::History::default(),
            }),
            max_body_bytes: config.limits.max_body_bytes,
            http: config.http.clone(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(follow_key_store(Arc::downgrade(&gateway.state)));
            runtime.spawn(keep_history(Arc::downgrade(&gateway.state)));
        }
        if let Some(jobs) = &gateway.state.jobs {
            let runner: Arc<dyn JobRunner> = gateway.state.clone();
            jobs.start(Arc::downgrade(&runner));
        }
        Ok(gateway)
    }

    /// Remembers the file the config came from, so `/admin/reload` and
    /// SIGHUP can read it again.
    pub fn with_config_path(self, path: PathBuf) -> Self {
        self.set_config_path(path);
        self
    }

    /// [`with_config_path`](Self::with_config_path) on a gateway already
    /// shared (serving).
    pub fn set_config_path(&self, path: PathBuf) {
        *self.state.config_path.lock().expect("config path poisoned") = Some(path);
    }

    /// Asks every deployment's credentials source once (at most 10 s
    /// each), and names those that gave none, with why.
    pub fn check_credentials(&self) -> impl Future<Output = Vec<(String, String)>> + 'static {
        let mut deployments: Vec<_> = self
            .state
            .service
            .router()
            .groups()
            .flat_map(|g| g.members.iter().cloned())
            .collect();
        deployments.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        deployments.dedup_by(|a, b| a.config.id == b.config.id);
        async move {
            let mut problems = Vec::new();
            for d in deployments {
                let check = d.upstream.credentials().get();
                let problem = match tokio::time::timeout(Duration::from_secs(10), check).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => crate::error_chain::render(&e),
                    Err(_) => "the credentials source did not answer within 10 s".to_owned(),
                };
                problems.push((d.config.id.clone(), problem));
            }
            problems
        }
    }

    /// The router, for inspection.
    pub fn router(&self) -> &Router {
        self.state.service.router()
    }

    /// The fair queue client requests wait in.
    pub fn queue(&self) -> &FairQueue {
        self.state.service.queue()
    }

    /// Routing behind the fair queue, as every API calls it.
    pub fn service(&self) -> &Service {
        &self.state.service
    }

    /// Where its shared state lives, and how the link to it is doing.
    pub fn shared_state(&self) -> &Arc<dyn state::StateBackend> {
        &self.state.shared_state
    }

    /// The policy runtime the gateway's policies run on.
    pub fn runtime(&self) -> &PolicyRuntime {
        &self.state.runtime
    }

    /// Changes policies at run time.
    pub fn swapper(&self) -> Swapper<'_> {
        Swapper {
            router: self.state.service.router(),
            runtime: &self.state.runtime,
        }
    }

    /// The HTTP routes.
    pub fn app(&self) -> axum::Router {
        api::routes(self.state.clone(), self.max_body_bytes)
    }

    /// Re-reads the config file and applies its policy changes.
    pub async fn reload(&self) -> Result<ReloadReport, ConfigError> {
        api::reload(&self.state).await
    }

    /// Watches the config's policy files and reloads a slot whose file
    /// changed, every `interval`. Runs until the returned task is dropped
    /// or aborted.
    pub fn watch_policy_files(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut stamps = HashMap::new();
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let config = state
                    .running_config
                    .lock()
                    .expect("config poisoned")
                    .clone();
                for (group, kind, path) in swap::policy_files(&config) {
                    let stamp = swap::file_stamp(&path);
                    let key = (group.clone(), kind);
                    let before = stamps.insert(key, stamp);
                    if before.is_none() || before == Some(stamp) {
                        continue;
                    }
                    let _guard = state.reloading.lock().await;
                    let Some(g) = config.model_groups.iter().find(|g| g.name == group) else {
                        continue;
                    };
                    let swapper = Swapper {
                        router: state.service.router(),
                        runtime: &state.runtime,
                    };
                    match swapper.reload_slot(&group, kind, g.policies_of(kind)) {
                        Ok(true) => {
                            tracing::info!(%group, %kind, path = %path.display(), "policy file changed; reloaded")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            let error = crate::error_chain::render(&e);
                            tracing::error!(%group, %kind, path = %path.display(), %error, "policy file changed but was refused; the active policy stays")
                        }
                    }
                }
            }
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains within
    /// `[http] shutdown_grace_ms` (see [`edge::serve`]); reloads the config
    /// on SIGHUP meanwhile. Returns how many connections the drain had to
    /// cut (0: every request and stream finished).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<usize> {
        #[cfg(unix)]
        let reloader = {
            let state = self.state.clone();
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    match api::reload(&state).await {
                        Ok(report) if report.needs_restart.is_empty() => {
                            tracing::info!(?report, "config reloaded on SIGHUP")
                        }
                        Ok(report) => tracing::warn!(
                            needs_restart = ?report.needs_restart,
                            ?report,
                            "config reloaded on SIGHUP; some changes need a restart"
                        ),
                        Err(e) => {
                            let error = crate::error_chain::render(&e);
                            tracing::error!(%error, "config reload on SIGHUP failed")
                        }
                    }
                }
            })
        };
        let cut = edge::serve(listener, self.app(), &self.http, shutdown).await;
        #[cfg(unix)]
        reloader.abort();
        Ok(cut)
    }
}

/// Each configured deployment with its upstream client and admission
/// (its quotas kept in `shared`), by id.
fn build_deployments(
    config: &Config,
    upstreams: &Upstreams,
    quotas: &[QuotaSpec],
    shared: &Arc<dyn StateBackend>,
) -> Result<HashMap<String, Arc<Deployment>>, StartError> {
    let mut deployments = HashMap::new();
    let mut pools = ConnectionPools::new(Duration::from_millis(config.limits.connect_timeout_ms));
    for d in &config.deployments {
        let budget = config
            .accounts
            .iter()
            .find(|a| a.name == d.account)
            .map(|a| a.budget())
            .unwrap_or_default();
        let mut d = d.clone();
        let endpoint = match (upstreams, &d.endpoint_url) {
            (Upstreams::Simulator(url), None) => {
                // The simulator takes any signature: no credentials, and no
                // role to assume (that would call the real STS).
                d.credentials = CredentialsConfig::Static {
                    access_key_id: "SIMULATOR".into(),
                    secret_access_key: "SIMULATOR".into(),
                    session_token: None,
                };
                d.assume_role = None;
                Some(url.as_str())
            }
            _ => None,
        };
        let upstream = Upstream::new(&d, &config.limits, endpoint, &mut pools)?;
        deployments.insert(
            d.id.clone(),
            Arc::new(Deployment {
                admission: DeploymentAdmission::new(
                    quotas
                        .iter()
                        .find(|q| q.deployment == d.id)
                        .cloned()
                        .expect("a spec per deployment"),
                    shared.clone(),
                    &config.admission,
                )
                .with_budget(budget),
                config: d,
                upstream,
                health: DeploymentHealth::default(),
            }),
        );
    }
    Ok(deployments)
}

/// Policy key-value stores by slot name (`group/kind`).
type KvStores = HashMap<SlotId, Arc<KvStore>>;

/// Each model group with its three policy slots loaded, and every slot's
/// key-value store by slot name (`group/kind`).
fn load_groups(
    config: &Config,
    runtime: &PolicyRuntime,
    clock: &SharedClock,
    shared: &Arc<dyn StateBackend>,
    deployments: &HashMap<String, Arc<Deployment>>,
) -> Result<(Vec<ModelGroup>, KvStores), StartError> {
    let rule = RollbackRule {
        window_calls: config.policy_runtime.rollback_window_calls as usize,
        max_fault_ratio: config.policy_runtime.rollback_fault_ratio,
    };
    let mut groups = Vec::new();
    let mut kv_stores = HashMap::new();
    for g in &config.model_groups {
        let mut slot = |kind: PolicyKind| -> Result<Arc<PolicySlot>, StartError> {
            let policy = g.policies_of(kind);
            let error = |source: SwapError| StartError::Policy {
                group: g.name.clone(),
                kind,
                policy: policy
                    .name
                    .clone()
                    .or_else(|| policy.path.as_ref().map(|p| p.display().to_string()))
                    .unwrap_or_default(),
                source: Box::new(source),
            };
            let (source, component) = swap::resolve(kind, policy).map_err(error)?;
            let slot_name = SlotId::new(&g.name, kind);
            let kv = Arc::new(KvStore::shared(
                clock.clone(),
                shared.clone(),
                slot_name.clone(),
            ));
            kv_stores.insert(slot_name, kv.clone());
            let label = source.label();
            let policy_loaded = runtime
                .load(kind, &label, &component, &policy.params, kv.clone())
                .map_err(|e| error(SwapError::Invalid(e)))?;
            let version =
                PolicyVersion::new(policy_loaded, source, component, policy.params.clone());
            Ok(Arc::new(PolicySlot::new(kind, version, kv, rule)))
        };
        let slots = GroupSlots {
            selection: slot(PolicyKind::Selection)?,
            cooldown: slot(PolicyKind::Cooldown)?,
            fallback: slot(PolicyKind::Fallback)?,
        };
        let members = g
            .deployments
            .iter()
            .map(|id| deployments[id].clone())
            .collect();
        groups.push(ModelGroup::new(g.name.clone(), members, slots));
    }
    Ok((groups, kv_stores))
}
