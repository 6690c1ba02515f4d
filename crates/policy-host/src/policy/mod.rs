//! The policy runtime: one wasmtime engine with the pooling allocator, a
//! pre-linked template (`InstancePre`) per loaded policy, and a fresh instance
//! for every call, so calls run in parallel without a lock and nothing leaks
//! between requests.
//!
//! A call that traps, overruns its deadline, runs out of memory or returns
//! invalid indices never fails a request: the caller gets a [`PolicyFault`],
//! counts it, and uses the safe order instead.

mod bindings;
pub mod builtin;
mod cache;
mod call_state;
mod declarations;
mod deployment_table;
mod error;
mod kv;
mod limits;
mod load_check;
mod slot;
mod world;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

pub use bindings::types::{
    Candidate, Circuit, CooldownDecision, DeploymentInfo, LastSuccess, Outcome, OutcomeKind,
    RequestInfo,
};
pub use cache::sha256_hex;
pub use call_state::PolicyLog;
pub use deployment_table::DeploymentTable;
pub use error::{LoadError, PolicyFault};
pub use kv::KvStore;
pub use slot::{
    PolicySlot, PolicySource, PolicyVersion, Rollback, RollbackRule, SlotError, VersionInfo,
};
pub use world::{WorldMismatch, PACKAGE, VERSION};

use bindings::cooldown::CooldownPre;
use bindings::fallback::FallbackPre;
use bindings::selection::SelectionPre;
use call_state::CallState;
use declarations::Declarations;
use limits::{EpochTicker, MemoryCap};

use crate::clock::SharedClock;
use crate::settings::PolicyRuntimeConfig;
pub use crate::vocabulary::PolicyKind;

/// The request id of the load check, the one call every policy gets when it
/// is loaded, on synthetic candidates. Documented in the WIT.
pub const LOAD_CHECK_REQUEST_ID: &str = "load-check";

/// Linear memory (and table) kept resident per pooled slot between calls:
/// one 64 KiB wasm page. The 16 KiB stack policies are linked with (the
/// template's `.cargo/config.toml`) and the SDK's 16 KiB arena put a
/// policy's whole working set in its first page, so a call that stays there
/// takes no page fault, and resetting its slot is one `memset` of 64 KiB.
/// Memory a call grows past it is handed back to the kernel after the call.
pub const KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// The fuel a metered call starts with: far more than any policy within its
/// deadline could burn, so the deadline, not fuel, is what stops a runaway.
const FUEL_BUDGET: u64 = u64::MAX / 2;

/// The least time the load check call is given.
const LOAD_CHECK_DEADLINE: Duration = Duration::from_secs(1);

/// What the engine is shared between: every loaded policy keeps it alive.
struct EngineShared {
    engine: Engine,
    linker: Linker<CallState>,
    deadline: limits::CallDeadline,
    /// The load check's deadline: generous, since it judges what a policy
    /// does, not how fast a cold instance runs it on a busy machine.
    load_check_deadline: limits::CallDeadline,
    memory_limit_bytes: usize,
    meter_fuel: bool,
    cache: Option<cache::CompileCache>,
    ticker: EpochTicker,
}

/// Loads policies and owns the engine they run on.
#[derive(Clone)]
pub struct PolicyRuntime {
    shared: Arc<EngineShared>,
    clock: SharedClock,
}

impl PolicyRuntime {
    /// An engine with the pooling allocator sized for `config`, whose policies
    /// read time from `clock`.
    pub fn new(config: &PolicyRuntimeConfig, clock: SharedClock) -> Result<Self, LoadError> {
        let memory_limit_bytes = config.memory_limit_mib as usize * 1024 * 1024;
        let instances = config.max_concurrent_calls;
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(instances)
            // wit-component adds small shim modules next to the policy's own.
            .max_core_instances_per_component(8)
            .total_core_instances(instances * 8)
            .max_memories_per_component(1)
            .total_memories(instances)
            .max_tables_per_component(4)
            .total_tables(instances * 4)
            .max_memory_size(memory_limit_bytes)
            // Reset a used slot by zeroing its first page instead of handing
            // it back to the kernel, so the next call takes no page faults
            // there (policies are linked with a small stack to fit).
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            // Asking the kernel which of those pages a call touched
            // (`PAGEMAP_SCAN`) costs more than zeroing one page outright:
            // side by side, 6.4 vs 5.0 µs a decision (BENCHMARKS.md).
            .pagemap_scan(Enabled::No);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .consume_fuel(config.meter_fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm).map_err(LoadError::Engine)?;
        let mut linker = Linker::new(&engine);
        bindings::host::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(LoadError::Engine)?;
        let deadline = Duration::from_micros(config.call_deadline_us);
        let tick = limits::tick_for(deadline);
        let ticker = EpochTicker::start(engine.clone(), tick);
        let cache = config
            .compile_cache
            .then(|| config.cache_dir.clone().or_else(cache::default_dir))
            .flatten()
            .and_then(|dir| match cache::CompileCache::new(&dir, &engine) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    let error = crate::error_chain::render(&e);
                    tracing::error!(%error, "not using the policy compile cache: it holds native code the gateway runs, so its folder must be the gateway's alone; policies are compiled in memory");
                    None
                }
            });
        Ok(Self {
            shared: Arc::new(EngineShared {
                engine,
                linker,
                deadline: limits::CallDeadline::new(deadline, tick),
                load_check_deadline: limits::CallDeadline::new(
                    deadline.max(LOAD_CHECK_DEADLINE),
                    tick,
                ),
                memory_limit_bytes,
                meter_fuel: config.meter_fuel,
                cache,
                ticker,
            }),
            clock,
        })
    }

    /// The clock policies see.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The world the component `bytes` implements, judged by its exports;
    /// for tools that are handed a component without a slot (`switchyard
    /// policy test` and `check`). [`load`](Self::load) then checks the rest.
    pub fn kind_of(&self, bytes: &[u8]) -> Result<PolicyKind, LoadError> {
        let component = self.compile(bytes)?;
        match world::detect(&self.shared.engine, &component) {
            Some(kind) => Ok(kind),
            // Judged as a selection policy, the check says what it lacks.
            None => Err(
                world::check(&self.shared.engine, &component, PolicyKind::Selection)
                    .err()
                    .map_or_else(|| LoadError::NoPolicyExport, LoadError::World),
            ),
        }
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        let engine = &self.shared.engine;
        match &self.shared.cache {
            Some(cache) => cache.compile(engine, bytes),
            None => Component::new(engine, bytes),
        }
        .map_err(LoadError::Invalid)
    }

    /// Compiles `bytes`, checks it implements `kind`'s world, and links it.
    /// `name` labels it in logs and stats; `params` is handed to it as JSON;
    /// `kv` is the slot's private state.
    pub fn load(
        &self,
        kind: PolicyKind,
        name: &str,
        bytes: &[u8],
        params: &serde_json::Value,
        kv: Arc<KvStore>,
    ) -> Result<Policy, LoadError> {
        let component = self.compile(bytes)?;
        world::check(&self.shared.engine, &component, kind)?;
        let link_error = |source: wasmtime::Error| LoadError::Link {
            world: kind.world(),
            source,
        };
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(link_error)?;
        let pre = match kind {
            PolicyKind::Selection => {
                KindPre::Selection(SelectionPre::new(pre).map_err(link_error)?)
            }
            PolicyKind::Cooldown => KindPre::Cooldown(CooldownPre::new(pre).map_err(link_error)?),
            PolicyKind::Fallback => KindPre::Fallback(FallbackPre::new(pre).map_err(link_error)?),
        };
        let policy = Policy {
            kind,
            id: NEXT_POLICY_ID.fetch_add(1, Ordering::Relaxed),
            declarations: Declarations::of(bytes),
            name: name.into(),
            params: params.to_string().into(),
            kv,
            pre,
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            stats: PolicyStats::default(),
        };
        policy.load_check()?;
        Ok(policy)
    }
}

enum KindPre {
    Selection(SelectionPre<CallState>),
    Cooldown(CooldownPre<CallState>),
    Fallback(FallbackPre<CallState>),
}

/// Call and fault counts of one loaded policy.
#[derive(Debug, Default)]
pub struct PolicyStats {
    calls: AtomicU64,
    faults: AtomicU64,
}

impl PolicyStats {
    /// Calls made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    /// Calls that faulted.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

/// Per-call settings that are not the policy's own.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The request the call is for, tagged on the policy's log lines.
    pub request_id: Option<String>,
    /// Seed for `random-u64`; `None` draws a fresh seed.
    pub seed: Option<u64>,
    /// What `host.describe` answers: the call's model group.
    pub deployments: DeploymentTable,
}

/// What a call cost and said, for `switchyard policy test` and the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallReport {
    /// The largest linear memory the instance had, in bytes.
    pub peak_memory_bytes: usize,
    /// The WebAssembly instructions the call executed, instantiation
    /// included, when the runtime meters fuel. The same for the same
    /// component, input, params, kv state, clock and seed, on every run.
    pub fuel_used: Option<u64>,
    /// The lines the policy logged.
    pub logs: Vec<PolicyLog>,
}

/// The next [`Policy::id`].
static NEXT_POLICY_ID: AtomicU64 = AtomicU64::new(1);

/// A loaded, linked policy. Cheap to call from many threads at once.
pub struct Policy {
    kind: PolicyKind,
    id: u64,
    declarations: Declarations,
    name: Arc<str>,
    params: Arc<str>,
    kv: Arc<KvStore>,
    pre: KindPre,
    shared: Arc<EngineShared>,
    clock: SharedClock,
    stats: PolicyStats,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Which world it implements.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Unique in this process: each load (a new version, new params) is a
    /// new policy.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its [`id`](Self::id) when it declared idempotent successes (a
    /// cooldown policy that need not judge a success after a success; see
    /// `attempt::run::settle`).
    pub fn idempotent_successes(&self) -> Option<u64> {
        self.declarations.idempotent_successes.then_some(self.id)
    }

    /// Its label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its call and fault counts.
    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    fn store(
        &self,
        options: &CallOptions,
        kv: &Arc<KvStore>,
        deadline: limits::CallDeadline,
    ) -> Store<CallState> {
        let rng = match options.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let state = CallState {
            clock: self.clock.clone(),
            rng,
            params: self.params.clone(),
            deployments: options.deployments.clone(),
            kv: kv.clone(),
            memory: MemoryCap::new(self.shared.memory_limit_bytes),
            policy_name: self.name.clone(),
            request_id: options.request_id.clone(),
            log_budget: 16,
            log_bytes_left: call_state::LOG_BYTES_PER_CALL,
            kv_bytes_left: call_state::KV_BYTES_PER_CALL,
            logs: Vec::new(),
            cpu: limits::CpuWatch::new(deadline),
            _ticking: self.shared.ticker.call_starting(),
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(deadline.ticks());
        store.epoch_deadline_callback(|mut store| {
            Ok(store.data_mut().cpu.on_deadline(limits::thread_cpu_time()))
        });
        if self.shared.meter_fuel {
            store
                .set_fuel(FUEL_BUDGET)
                .expect("fuel is enabled on this engine");
        }
        store
    }

    fn classify(&self, store: &Store<CallState>, error: wasmtime::Error) -> PolicyFault {
        if store.data().memory.refused {
            return PolicyFault::OutOfMemory;
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PolicyFault::Timeout,
            Some(trap) => PolicyFault::Trap(trap.to_string()),
            None => PolicyFault::Trap(format!("{error:#}")),
        }
    }

    fn env<'a>(&'a self, options: &'a CallOptions) -> CallEnv<'a> {
        CallEnv {
            options,
            kv: &self.kv,
            deadline: self.shared.deadline,
        }
    }

    fn count<T>(&self, (result, report): Called<T>) -> Result<(T, CallReport), PolicyFault> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        result.map(|value| (value, report))
    }

    /// Runs `select`. The indices are checked: each must be in range and appear once.
    pub fn select(
        &self,
        req: &RequestInfo,
        candidates: &[Candidate],
        options: &CallOptions,
    ) -> Result<(Vec<usize>, CallReport), PolicyFault> {
        self.count(self.run_select(req, candidates, self.env(options)))
    }

    /// Runs `on-outcome`.
    pub fn on_outcome(
        &self,
        outcome: &Outcome,
        candidate: &Candidate,
        options: &CallOptions,
    ) -> Result<(CooldownDecision, CallReport), PolicyFault> {
        self.count(self.run_on_outcome(outcome, candidate, self.env(options)))
    }

    /// Runs `next`. The indices are checked like `select`'s.
    pub fn next(
        &self,
        req: &RequestInfo,
        failed: &Outcome,
        tried: &[Candidate],
        remaining: &[Candidate],
        options: &CallOptions,
    ) -> Result<(Vec<usize>, CallReport), PolicyFault> {
        self.count(self.run_next(req, failed, tried, remaining, self.env(options)))
    }

    fn run_select(
        &self,
        req: &RequestInfo,
        candidates: &[Candidate],
        env: CallEnv<'_>,
    ) -> Called<Vec<usize>> {
        let KindPre::Selection(pre) = &self.pre else {
            return (
                Err(self.wrong_kind(PolicyKind::Selection)),
                CallReport::default(),
            );
        };
        let mut store = self.store(env.options, env.kv, env.deadline);
        let result = pre
            .instantiate(&mut store)
            .map_err(|e| PolicyFault::Instantiate(format!("{e:#}")))
            .and_then(|instance| {
                instance
                    .call_select(&mut store, req, candidates)
                    .map_err(|e| self.classify(&store, e))
            })
            .and_then(|indices| checked_order(&indices, candidates.len()));
        (result, report(&mut store))
    }

    fn run_on_outcome(
        &self,
        outcome: &Outcome,
        candidate: &Candidate,
        env: CallEnv<'_>,
    ) -> Called<CooldownDecision> {
        let KindPre::Cooldown(pre) = &self.pre else {
            return (
                Err(self.wrong_kind(PolicyKind::Cooldown)),
                CallReport::default(),
            );
        };
        let mut store = self.store(env.options, env.kv, env.deadline);
        let result = pre
            .instantiate(&mut store)
            .map_err(|e| PolicyFault::Instantiate(format!("{e:#}")))
            .and_then(|instance| {
                instance
                    .call_on_outcome(&mut store, outcome, candidate)
                    .map_err(|e| self.classify(&store, e))
            });
        (result, report(&mut store))
    }

    fn run_next(
        &self,
        req: &RequestInfo,
        failed: &Outcome,
        tried: &[Candidate],
        remaining: &[Candidate],
        env: CallEnv<'_>,
    ) -> Called<Vec<usize>> {
        let KindPre::Fallback(pre) = &self.pre else {
            return (
                Err(self.wrong_kind(PolicyKind::Fallback)),
                CallReport::default(),
            );
        };
        let mut store = self.store(env.options, env.kv, env.deadline);
        let result = pre
            .instantiate(&mut store)
            .map_err(|e| PolicyFault::Instantiate(format!("{e:#}")))
            .and_then(|instance| {
                instance
                    .call_next(&mut store, req, failed, tried, remaining)
                    .map_err(|e| self.classify(&store, e))
            })
            .and_then(|indices| checked_order(&indices, remaining.len()));
        (result, report(&mut store))
    }

    /// One call on synthetic input, with private throwaway state, so a policy
    /// that cannot run (bad params, a trap on any input) is refused at load
    /// instead of faulting on every request.
    fn load_check(&self) -> Result<(), LoadError> {
        let kv = Arc::new(KvStore::new(self.clock.clone()));
        let candidates = load_check::candidates(self.clock.now_ms());
        let options = CallOptions {
            request_id: Some(LOAD_CHECK_REQUEST_ID.to_owned()),
            seed: Some(0),
            deployments: load_check::deployments(&candidates),
        };
        let req = load_check::request();
        let outcome = load_check::outcome(self.clock.now_ms());
        let env = CallEnv {
            options: &options,
            kv: &kv,
            deadline: self.shared.load_check_deadline,
        };
        let (result, report) = match self.kind {
            PolicyKind::Selection => {
                let (r, report) = self.run_select(&req, &candidates, env);
                (r.map(drop), report)
            }
            PolicyKind::Cooldown => {
                let (r, report) = self.run_on_outcome(&outcome, &candidates[0], env);
                (r.map(drop), report)
            }
            PolicyKind::Fallback => {
                let (r, report) =
                    self.run_next(&req, &outcome, &candidates[..1], &candidates[1..], env);
                (r.map(drop), report)
            }
        };
        result.map_err(|fault| LoadError::LoadCheck {
            fault,
            logs: report.logs,
        })
    }

    fn wrong_kind(&self, called: PolicyKind) -> PolicyFault {
        PolicyFault::Instantiate(format!(
            "{} policy `{}` was called as a {called} policy",
            self.kind, self.name
        ))
    }
}

/// What a call runs with besides its arguments.
#[derive(Clone, Copy)]
struct CallEnv<'a> {
    options: &'a CallOptions,
    kv: &'a Arc<KvStore>,
    deadline: limits::CallDeadline,
}

/// A call's result with what it cost, before it is counted.
type Called<T> = (Result<T, PolicyFault>, CallReport);

fn report(store: &mut Store<CallState>) -> CallReport {
    CallReport {
        peak_memory_bytes: store.data().memory.peak_bytes,
        // Fails only when the engine does not meter fuel.
        fuel_used: store.get_fuel().ok().map(|left| FUEL_BUDGET - left),
        logs: std::mem::take(&mut store.data_mut().logs),
    }
}

/// Turns a policy's indices into an order, refusing any out-of-range or repeated index.
fn checked_order(indices: &[u32], len: usize) -> Result<Vec<usize>, PolicyFault> {
    let mut seen = vec![false; len];
    let mut order = Vec::with_capacity(indices.len());
    for &i in indices {
        let i = i as usize;
        match seen.get_mut(i) {
            None => {
                return Err(PolicyFault::BadResult(format!(
                    "index {i} is out of range for {len} candidates"
                )))
            }
            Some(true) => return Err(PolicyFault::BadResult(format!("index {i} is repeated"))),
            Some(slot) => *slot = true,
        }
        order.push(i);
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_order_refuses_bad_indices() {
        assert_eq!(checked_order(&[2, 0], 3).unwrap(), vec![2, 0]);
        assert!(checked_order(&[], 3).unwrap().is_empty());
        assert!(matches!(
            checked_order(&[3], 3),
            Err(PolicyFault::BadResult(_))
        ));
        assert!(matches!(
            checked_order(&[1, 1], 3),
            Err(PolicyFault::BadResult(_))
        ));
    }
}
