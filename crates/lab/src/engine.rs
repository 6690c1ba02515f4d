//! One contender's run: a discrete-event simulation on a manual clock.
//!
//! Requests arrive as scheduled. Each runs the gateway's attempt loop: the
//! selection policy orders the deployments, each attempt goes to the
//! simulator's own quota model (`sim::quota`, a rolling minute like
//! Bedrock's), takes the deployment's latency or comes back throttled, the
//! cooldown policy judges the outcome, and after a failure the fallback
//! policy orders what is left. Health (in-flight counts, cooldowns, recent
//! throttles, latency) is the gateway's own `health` code. Attempts take
//! simulated time, so in-flight counts and cooldowns evolve as they would
//! in a gateway, while a ten-minute scenario runs in well under a second.
//!
//! Accounts' daily and weekly budgets are enforced as the gateway's
//! admission does (a spent budget skips the deployment; policies see the
//! budget's use in `quota-used-permille`), with the gateway's own books.
//! Not modelled: the rest of admission control (the fair queue, token
//! buckets and waiting for capacity). The lab compares policies, so a
//! request whose attempts all fail is a client-visible error, as it is for
//! a gateway that does not know the quotas.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use super::arrivals::Arrival;
use super::scenario::{Contender, Scenario, ScenarioError};
use switchyard_clock::{ManualClock, SharedClock};
use switchyard_policy_host::attempt::{AttemptRun, RunContext};
use switchyard_policy_host::budget::{BudgetBook, BudgetGrant};
use switchyard_policy_host::candidate::{deployment_table, wit_candidate};
use switchyard_policy_host::health::DeploymentHealth;
use switchyard_policy_host::offline::{OfflineCalls, OfflinePolicies};
use switchyard_policy_host::outcome::{Outcome, OutcomeKind};
use switchyard_policy_host::policy::{
    CallOptions, Candidate, DeploymentTable, LastSuccess, RequestInfo,
};
use switchyard_sim::quota::RollingQuota;

/// Where the simulated clock starts: Monday 1970-01-05 00:00 UTC, far
/// from zero as a gateway's clock would be, and where a budget week begins,
/// so a week-long scenario is one budget week (days and weeks are UTC).
const START_MS: u64 = 345_600_000;

/// What happened in one contender's run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunRecord {
    pub requests: u64,
    pub served: u64,
    /// Requests that ended in an error the client saw.
    pub failed: u64,
    /// Calls that reached the simulator, and those it answered with a 429.
    pub upstream_calls: u64,
    pub upstream_throttles: u64,
    /// Requests answered by a deployment of the best (lowest) priority.
    pub served_by_primary: u64,
    /// From arrival to answer, of each served request, in ms.
    pub latencies_ms: Vec<u64>,
    /// Per user (scenario order): requests sent and served.
    pub per_user: Vec<(u64, u64)>,
    /// Per deployment (scenario order): time spent cooling down, in ms,
    /// sampled every simulated second.
    pub cooling_ms: Vec<u64>,
    /// Per deployment, per chart bucket: requests it answered.
    pub answered: Vec<Vec<u64>>,
    /// Per chart bucket: requests that failed.
    pub failed_per_bucket: Vec<u64>,
    /// Policy calls that faulted (the gateway's safe answer stood in).
    pub policy_faults: u64,
    /// Per account (in the order deployments first name them).
    pub per_account: Vec<AccountUse>,
}

/// What one account's deployments were asked for.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AccountUse {
    pub account: String,
    /// Calls its deployments took, and the tokens those used.
    pub requests: u64,
    pub tokens: u64,
    /// The most spent in any one day and in any one week.
    pub peak_day_tokens: u64,
    pub peak_day_requests: u64,
    pub peak_week_tokens: u64,
    pub peak_week_requests: u64,
    /// The fullest its budgets were, in thousandths (0 without budgets).
    pub peak_budget_permille: u32,
    /// Attempts its spent budgets turned away.
    pub budget_skips: u64,
}

/// A request on its way through the attempt loop.
struct InProgress {
    user: usize,
    arrived_ms: u64,
    /// Its pass over the deployments: what is left to try and what was
    /// tried (indices into the deployments), and the request as policies
    /// see it.
    run: AttemptRun,
    /// The attempt under way.
    attempt: Option<Attempt>,
}

/// An attempt under way.
struct Attempt {
    deployment: usize,
    /// How it will end, and when.
    kind: OutcomeKind,
    latency_ms: u64,
    /// What it took from its account's budgets, if they are limited.
    budget: Option<BudgetGrant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The attempt under way for this request ends (before arrivals at the
    /// same millisecond, as capacity freed then is there for them).
    AttemptEnds(usize),
    /// The n-th arrival.
    Arrives(usize),
}

struct Deployment {
    /// Its place in the scenario, which the record's tables follow.
    scenario_index: usize,
    lab: super::scenario::LabDeployment,
    config: switchyard_policy_host::settings::DeploymentConfig,
    health: DeploymentHealth,
    quota: RollingQuota,
    /// Its account's place in the record's `per_account`.
    account: usize,
}

/// Runs `contender` over `arrivals`; `progress` hears the simulated
/// milliseconds done so far. Returns where each policy came from (by world)
/// and what happened.
pub fn run(
    scenario: &Scenario,
    contender: &Contender,
    arrivals: &[Arrival],
    progress: &mut dyn FnMut(u64),
) -> Result<(BTreeMap<String, String>, RunRecord), ScenarioError> {
    let clock = ManualClock::new(START_MS);
    let shared: SharedClock = clock.clone();
    let accounts = scenario.account_names();
    let policies = OfflinePolicies::load(&shared, &contender.group_policies(), &Default::default())
        .map_err(|source| ScenarioError::Policy {
            contender: contender.name.clone(),
            source,
        })?;
    let mut deployments: Vec<Deployment> = scenario
        .deployments
        .iter()
        .enumerate()
        .map(|(scenario_index, d)| Deployment {
            scenario_index,
            lab: d.clone(),
            config: d.gateway_config(),
            health: DeploymentHealth::default(),
            quota: RollingQuota::new(d.rpm, d.tpm),
            account: accounts
                .iter()
                .position(|a| *a == d.account)
                .expect("every deployment's account is listed"),
        })
        .collect();
    let books = accounts
        .iter()
        .map(|name| {
            scenario
                .accounts
                .iter()
                .find(|a| a.name == *name)
                .map(|a| a.budget())
                .filter(|b| b.is_limited())
                .map(BudgetBook::new)
        })
        .collect();
    // In the safe order, as a gateway's model group holds them: policies
    // see the candidates in the same order as in production.
    deployments.sort_by_key(|d| d.config.priority);
    let mut sim = Simulation {
        scenario,
        policies,
        table: deployment_table(deployments.iter().map(|d| &d.config)),
        priorities: deployments.iter().map(|d| d.config.priority).collect(),
        deployments,
        books,
        best_priority: scenario
            .deployments
            .iter()
            .map(|d| d.priority)
            .min()
            .unwrap_or(1),
        requests: Vec::new(),
        last_success: HashMap::new(),
        record: RunRecord {
            per_user: vec![(0, 0); scenario.users.len()],
            cooling_ms: vec![0; scenario.deployments.len()],
            answered: vec![vec![0; buckets(scenario) as usize]; scenario.deployments.len()],
            failed_per_bucket: vec![0; buckets(scenario) as usize],
            per_account: accounts
                .iter()
                .map(|account| AccountUse {
                    account: account.clone(),
                    ..AccountUse::default()
                })
                .collect(),
            ..RunRecord::default()
        },
        events: arrivals
            .iter()
            .enumerate()
            .map(|(n, a)| Reverse((a.at_ms, Event::Arrives(n))))
            .collect(),
        sampled_to_s: 0,
    };
    while let Some(Reverse((at_ms, event))) = sim.events.pop() {
        sim.sample_cooldowns_until(at_ms);
        clock.set(START_MS + at_ms);
        match event {
            Event::Arrives(n) => sim.arrive(arrivals[n], at_ms),
            Event::AttemptEnds(r) => sim.end_attempt(r, at_ms),
        }
        progress(at_ms);
    }
    sim.sample_cooldowns_until(scenario.duration_s * 1000);
    Ok((sim.policies.names.clone(), sim.record))
}

fn buckets(scenario: &Scenario) -> u64 {
    scenario.duration_s.div_ceil(scenario.bucket_s)
}

/// The deployments and their accounts' budgets at one instant, as a run
/// sees them.
struct LabContext<'a> {
    deployments: &'a mut [Deployment],
    books: &'a mut [Option<BudgetBook>],
    now: u64,
}

impl RunContext for LabContext<'_> {
    fn members(&self) -> usize {
        self.deployments.len()
    }

    /// Its health, and its quota use as a gateway configured with the
    /// same quotas would know it.
    fn candidate(&mut self, member: usize) -> Candidate {
        let d = &mut self.deployments[member];
        let budget = self.books[d.account]
            .as_mut()
            .map_or(0, |book| book.usage(self.now).used_permille);
        Candidate {
            quota_used_permille: d.quota.used_permille(self.now).max(budget),
            ..wit_candidate(&d.config, &d.health.candidate(self.now))
        }
    }

    fn health(&self, member: usize) -> &DeploymentHealth {
        &self.deployments[member].health
    }
}

struct Simulation<'a> {
    scenario: &'a Scenario,
    policies: OfflinePolicies,
    deployments: Vec<Deployment>,
    /// Each account's budget books (by its place in `per_account`), when it
    /// has budgets.
    books: Vec<Option<BudgetBook>>,
    /// Each deployment's priority, for the attempt plans' safe order.
    priorities: Arc<[u32]>,
    /// Where they run, for `host.describe`.
    table: DeploymentTable,
    best_priority: u32,
    requests: Vec<InProgress>,
    last_success: HashMap<usize, LastSuccess>,
    record: RunRecord,
    events: BinaryHeap<Reverse<(u64, Event)>>,
    /// Cooldowns are sampled at every whole simulated second up to here.
    sampled_to_s: u64,
}

impl Simulation<'_> {
    fn now(&self, at_ms: u64) -> u64 {
        START_MS + at_ms
    }

    /// The id of the `request`-th request.
    fn request_id(request: usize) -> String {
        format!("lab-{request}")
    }

    fn options(&self, request: usize) -> CallOptions {
        CallOptions {
            request_id: Some(Self::request_id(request)),
            // Per request, so every contender sees the same randomness for
            // the same request.
            seed: Some(self.scenario.seed ^ request as u64),
            deployments: self.table.clone(),
        }
    }

    fn bucket(&self, at_ms: u64) -> usize {
        let last = self.record.failed_per_bucket.len().saturating_sub(1);
        ((at_ms / 1000 / self.scenario.bucket_s) as usize).min(last)
    }

    fn sample_cooldowns_until(&mut self, at_ms: u64) {
        let end_s = (at_ms / 1000).min(self.scenario.duration_s);
        while self.sampled_to_s < end_s {
            self.sampled_to_s += 1;
            let now = self.now(self.sampled_to_s * 1000);
            for d in &self.deployments {
                if d.health.candidate(now).cooldown_remaining_ms > 0 {
                    self.record.cooling_ms[d.scenario_index] += 1000;
                }
            }
        }
    }

    fn arrive(&mut self, arrival: Arrival, at_ms: u64) {
        let index = self.requests.len();
        let user = &self.scenario.users[arrival.user];
        let info = RequestInfo {
            request_id: Self::request_id(index),
            user: Some(user.name.clone()),
            model_group: "lab".into(),
            attempt: 0,
            sequence: index as u64,
            estimated_tokens: u32::try_from(self.scenario.request.total_tokens())
                .unwrap_or(u32::MAX),
            previous_deployment: None,
            user_last_success: self.last_success.get(&arrival.user).cloned(),
        };
        self.record.requests += 1;
        self.record.per_user[arrival.user].0 += 1;
        let mut faults = Vec::new();
        let options = self.options(index);
        let priorities = self.priorities.clone();
        let mut calls = OfflineCalls {
            policies: &self.policies,
            faults: &mut faults,
        };
        let mut context = LabContext {
            now: START_MS + at_ms,
            deployments: &mut self.deployments,
            books: &mut self.books,
        };
        let run = AttemptRun::start(priorities, 0, info, options, &mut context, &mut calls);
        self.record.policy_faults += faults.len() as u64;
        self.requests.push(InProgress {
            user: arrival.user,
            arrived_ms: at_ms,
            run,
            attempt: None,
        });
        self.start_next_attempt(index, at_ms);
    }

    /// Starts the next attempt of `request`, or fails it when nothing is left.
    fn start_next_attempt(&mut self, request: usize, at_ms: u64) {
        let now = self.now(at_ms);
        let tokens = self.scenario.request.total_tokens();
        // As the gateway's admission: a spent budget skips the deployment.
        let (i, budget) = loop {
            let Some(i) = self.requests[request].run.next_attempt() else {
                self.fail(at_ms);
                return;
            };
            let account = self.deployments[i].account;
            let Some(book) = self.books[account].as_mut() else {
                break (i, None);
            };
            match book.take(tokens, now) {
                Ok(grant) => break (i, Some(grant)),
                Err(_) => {
                    self.record.per_account[account].budget_skips += 1;
                    self.requests[request].run.refused(i);
                }
            }
        };
        let context = LabContext {
            now,
            deployments: &mut self.deployments,
            books: &mut self.books,
        };
        self.requests[request].run.begin(&context, i, now);
        let d = &mut self.deployments[i];
        self.record.upstream_calls += 1;
        let (kind, latency_ms) = match d.quota.try_admit(now, tokens) {
            Ok(()) => (
                OutcomeKind::Success,
                d.lab.latency_ms(&self.scenario.request),
            ),
            Err(_) => {
                self.record.upstream_throttles += 1;
                (OutcomeKind::Throttled, self.scenario.throttle_latency_ms)
            }
        };
        self.requests[request].attempt = Some(Attempt {
            deployment: i,
            kind,
            latency_ms,
            budget,
        });
        self.events
            .push(Reverse((at_ms + latency_ms, Event::AttemptEnds(request))));
    }

    /// Books an attempt on deployment `i` that ended as `kind` with its
    /// account, and settles what it took from the budgets.
    fn account_used(&mut self, i: usize, kind: OutcomeKind, taken: Option<BudgetGrant>, now: u64) {
        let account = self.deployments[i].account;
        let used = if kind == OutcomeKind::Success {
            self.scenario.request.total_tokens()
        } else {
            0
        };
        let record = &mut self.record.per_account[account];
        record.requests += 1;
        record.tokens += used;
        let Some(book) = self.books[account].as_mut() else {
            return;
        };
        if let Some(taken) = taken {
            book.settle(&taken, true, used);
        }
        let usage = book.usage(now);
        record.peak_day_tokens = record.peak_day_tokens.max(usage.day.tokens);
        record.peak_day_requests = record.peak_day_requests.max(usage.day.requests);
        record.peak_week_tokens = record.peak_week_tokens.max(usage.week.tokens);
        record.peak_week_requests = record.peak_week_requests.max(usage.week.requests);
        record.peak_budget_permille = record.peak_budget_permille.max(usage.used_permille);
    }

    /// A request ends without an answer.
    fn fail(&mut self, at_ms: u64) {
        self.record.failed += 1;
        let bucket = self.bucket(at_ms);
        self.record.failed_per_bucket[bucket] += 1;
    }

    fn end_attempt(&mut self, request: usize, at_ms: u64) {
        let Some(Attempt {
            deployment: i,
            kind,
            latency_ms,
            budget,
        }) = self.requests[request].attempt.take()
        else {
            return;
        };
        let now = self.now(at_ms);
        self.account_used(i, kind, budget, now);
        let outcome = Outcome {
            deployment: self.deployments[i].config.id.clone(),
            kind,
            latency_ms: u32::try_from(latency_ms).unwrap_or(u32::MAX),
            retry_after_ms: None,
            at_ms: now,
            detail: None,
            upstream_status: None,
        };
        let mut faults = Vec::new();
        let mut context = LabContext {
            now,
            deployments: &mut self.deployments,
            books: &mut self.books,
        };
        let policies = &self.policies;
        self.requests[request].run.settle(
            &mut context,
            i,
            &outcome,
            policies.idempotent_successes(),
            |o, before, options| policies.judge(o, before, options, &mut faults),
        );
        if kind == OutcomeKind::Success {
            let r = &self.requests[request];
            self.record.served += 1;
            self.record.per_user[r.user].1 += 1;
            self.record.latencies_ms.push(at_ms - r.arrived_ms);
            if self.deployments[i].lab.priority == self.best_priority {
                self.record.served_by_primary += 1;
            }
            let bucket = self.bucket(at_ms);
            self.record.answered[self.deployments[i].scenario_index][bucket] += 1;
            self.last_success.insert(
                r.user,
                LastSuccess {
                    deployment: outcome.deployment,
                    at_ms: now,
                },
            );
            self.record.policy_faults += faults.len() as u64;
            return;
        }
        let mut context = LabContext {
            now,
            deployments: &mut self.deployments,
            books: &mut self.books,
        };
        let mut calls = OfflineCalls {
            policies: &self.policies,
            faults: &mut faults,
        };
        let more = self.requests[request]
            .run
            .fall_back(&mut context, &mut calls, &outcome);
        self.record.policy_faults += faults.len() as u64;
        if !more {
            self.fail(at_ms);
            return;
        }
        self.start_next_attempt(request, at_ms);
    }
}
