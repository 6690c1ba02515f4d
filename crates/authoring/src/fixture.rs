//! The fixture format of `switchyard policy test`: one policy call, with
//! everything it may read fixed (clock, random seed, params, key-value state)
//! and the decision it should make.
//!
//! A fixture file holds one fixture object or an array of them. Only the
//! inputs of the policy's own world are needed; everything else has a
//! default (see `docs/policy-testing.md`):
//!
//! ```json
//! {
//!   "name": "a throttled primary is skipped",
//!   "now_ms": 1000000,
//!   "seed": 7,
//!   "params": {"skip_threshold_ms": 2000},
//!   "request": {"user": "alice"},
//!   "candidates": [
//!     {"deployment": "a", "cooldown_remaining_ms": 9000},
//!     {"deployment": "b"}
//!   ],
//!   "expect": ["b"]
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use switchyard_policy_host::policy::{self, DeploymentTable, PolicyKind};

/// The clock a fixture starts at when it names none: far enough from zero
/// that "5 s ago" is a valid time.
const DEFAULT_NOW_MS: u64 = 1_000_000;

/// One policy call and its expected decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// What it checks; defaults to the file name (and position, in an array).
    #[serde(default)]
    pub name: Option<String>,
    /// The host clock during the call (`now-ms`), in milliseconds.
    #[serde(default = "default_now")]
    pub now_ms: u64,
    /// The seed of `random-u64`.
    #[serde(default)]
    pub seed: u64,
    /// The policy's params, as in the gateway config.
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    /// The policy's key-value state before the call: each value UTF-8 text,
    /// or `{"hex": "..."}` for bytes.
    #[serde(default)]
    pub kv: BTreeMap<String, KvValue>,
    /// The request (selection and fallback).
    #[serde(default)]
    pub request: RequestFixture,
    /// Selection: the deployments to order.
    #[serde(default)]
    pub candidates: Option<Vec<CandidateFixture>>,
    /// Cooldown: the attempt that ended.
    #[serde(default)]
    pub outcome: Option<OutcomeFixture>,
    /// Cooldown: the deployment it went to, before the outcome is recorded.
    #[serde(default)]
    pub candidate: Option<CandidateFixture>,
    /// Fallback: the attempt that just failed.
    #[serde(default)]
    pub failed: Option<OutcomeFixture>,
    /// Fallback: the deployments tried so far, the failed one last.
    #[serde(default)]
    pub tried: Option<Vec<CandidateFixture>>,
    /// Fallback: the deployments not tried yet.
    #[serde(default)]
    pub remaining: Option<Vec<CandidateFixture>>,
    /// The decision it must make. Selection and fallback: deployment ids in
    /// order. Cooldown: `{"cooldown_ms": N, "clear_history": bool}`. Without
    /// it, the decision is shown and not judged.
    #[serde(default)]
    pub expect: Option<Decision>,
}

fn default_now() -> u64 {
    DEFAULT_NOW_MS
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A key-value entry's value in a fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KvValue {
    /// UTF-8 text.
    Text(String),
    /// Bytes, as hex digits.
    Hex {
        /// Two hex digits per byte.
        hex: String,
    },
}

impl KvValue {
    /// The bytes it stands for, or why it stands for none.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::Text(text) => Ok(text.clone().into_bytes()),
            Self::Hex { hex } => {
                let digits: Vec<char> = hex.chars().filter(|c| !c.is_whitespace()).collect();
                if !digits.len().is_multiple_of(2) {
                    return Err(format!("`{hex}` has an odd number of hex digits"));
                }
                digits
                    .chunks(2)
                    .map(|pair| {
                        let byte: String = pair.iter().collect();
                        u8::from_str_radix(&byte, 16)
                            .map_err(|_| format!("`{byte}` is not a hex byte"))
                    })
                    .collect()
            }
        }
    }
}

/// What a policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Decision {
    /// Selection and fallback: deployment ids, in the order to try them.
    Order(Vec<String>),
    /// Cooldown.
    Cooldown {
        /// How long the deployment is benched, from now.
        cooldown_ms: u64,
        /// Whether its throttle history is forgotten.
        clear_history: bool,
    },
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Order(ids) => write!(f, "[{}]", ids.join(", ")),
            Self::Cooldown {
                cooldown_ms,
                clear_history,
            } => write!(
                f,
                "cooldown {cooldown_ms} ms{}",
                if *clear_history {
                    ", clear history"
                } else {
                    ""
                }
            ),
        }
    }
}

impl Decision {
    /// The lines that say how `actual` differs from `self`, the expectation;
    /// empty when they are equal.
    pub fn diff(&self, actual: &Decision) -> Vec<String> {
        match (self, actual) {
            (a, b) if a == b => Vec::new(),
            (Self::Order(want), Self::Order(got)) => {
                let mut lines = vec![
                    format!("- expected: {self}"),
                    format!("+ actual:   {actual}"),
                ];
                if let Some(at) =
                    (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i))
                {
                    let show = |v: Option<&String>| v.map_or("(nothing)".to_owned(), Clone::clone);
                    lines.push(format!(
                        "  first difference at position {}: expected {}, got {}",
                        at + 1,
                        show(want.get(at)),
                        show(got.get(at))
                    ));
                }
                lines
            }
            (
                Self::Cooldown {
                    cooldown_ms: want_ms,
                    clear_history: want_clear,
                },
                Self::Cooldown {
                    cooldown_ms: got_ms,
                    clear_history: got_clear,
                },
            ) => {
                let mut lines = Vec::new();
                if want_ms != got_ms {
                    lines.push(format!("- expected cooldown_ms:   {want_ms}"));
                    lines.push(format!("+ actual cooldown_ms:     {got_ms}"));
                }
                if want_clear != got_clear {
                    lines.push(format!("- expected clear_history: {want_clear}"));
                    lines.push(format!("+ actual clear_history:   {got_clear}"));
                }
                lines
            }
            _ => vec![
                format!("- expected: {self}"),
                format!("+ actual:   {actual}"),
                "  (the expectation is for another kind of policy)".to_owned(),
            ],
        }
    }
}

/// The request being routed; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestFixture {
    /// Default `fixture`.
    pub request_id: String,
    /// Default none.
    pub user: Option<String>,
    /// Default `default`.
    pub model_group: String,
    /// Default 0.
    pub attempt: u32,
    /// Default 0.
    pub sequence: u64,
    /// Default 0.
    pub estimated_tokens: u32,
    /// Default none.
    pub previous_deployment: Option<String>,
    /// Default none.
    pub user_last_success: Option<LastSuccessFixture>,
}

impl Default for RequestFixture {
    fn default() -> Self {
        Self {
            request_id: "fixture".into(),
            user: None,
            model_group: "default".into(),
            attempt: 0,
            sequence: 0,
            estimated_tokens: 0,
            previous_deployment: None,
            user_last_success: None,
        }
    }
}

/// Where the request's user last succeeded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastSuccessFixture {
    /// The deployment.
    pub deployment: String,
    /// When.
    pub at_ms: u64,
}

/// A deployment as a policy sees it. Only `deployment` is required; the rest
/// describe a healthy, idle deployment unless set. `priority` defaults to the
/// position in its list (1 for the first).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateFixture {
    pub deployment: String,
    #[serde(default)]
    pub model_id: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub in_flight: u32,
    #[serde(default)]
    pub cooldown_remaining_ms: u64,
    #[serde(default)]
    pub recent_throttles: u32,
    #[serde(default)]
    pub last_used_ms: Option<u64>,
    #[serde(default)]
    pub last_throttle_ms: Option<u64>,
    #[serde(default)]
    pub quota_used_permille: u32,
    #[serde(default = "thousand")]
    pub success_permille: u32,
    #[serde(default)]
    pub latency_ewma_ms: u32,
    #[serde(default)]
    pub circuit: CircuitFixture,
}

fn one() -> u32 {
    1
}

fn thousand() -> u32 {
    1000
}

/// A circuit breaker state.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitFixture {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

/// How an attempt ended.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeFixture {
    /// Defaults to the candidate's (cooldown) or the last tried (fallback).
    #[serde(default)]
    pub deployment: Option<String>,
    /// `success`, `throttled`, `unavailable`, `timeout`, `client_error` or `server_error`.
    pub kind: OutcomeKindFixture,
    #[serde(default)]
    pub latency_ms: u32,
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Defaults to the fixture's `now_ms`.
    #[serde(default)]
    pub at_ms: Option<u64>,
}

/// An outcome kind, spelled as in the gateway's stats.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKindFixture {
    Success,
    Throttled,
    Unavailable,
    Timeout,
    ClientError,
    ServerError,
}

/// A fixture that cannot be run as given.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a fixture.
    #[error("{path} is not a valid fixture file")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A value in it is malformed.
    #[error("fixture `{name}`: {message}")]
    Invalid { name: String, message: String },
    /// It lacks an input the policy's world needs.
    #[error("fixture `{name}`: a {kind} policy needs `{field}`")]
    Missing {
        name: String,
        kind: PolicyKind,
        field: &'static str,
    },
}

/// A fixture with where it came from.
#[derive(Debug, Clone)]
pub struct NamedFixture {
    /// Its name: its own, or derived from the file.
    pub name: String,
    /// The file it is in.
    pub path: PathBuf,
    /// The fixture.
    pub fixture: Fixture,
}

/// Reads the fixtures of one file (one object, or an array of them).
pub fn read(path: &Path) -> Result<Vec<NamedFixture>, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
        path: path.to_owned(),
        source,
    })?;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Fixture>),
        One(Box<Fixture>),
    }
    let parsed: OneOrMany = serde_json::from_str(&text)
        // Untagged enums hide the real error; parse again as one object for it.
        .or_else(|_| serde_json::from_str::<Fixture>(&text).map(|f| OneOrMany::One(Box::new(f))))
        .map_err(|source| FixtureError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let stem = path.file_stem().map_or_else(
        || "fixture".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    let named = |fixture: Fixture, default: String| NamedFixture {
        name: fixture.name.clone().unwrap_or(default),
        path: path.to_owned(),
        fixture,
    };
    Ok(match parsed {
        OneOrMany::One(f) => vec![named(*f, stem)],
        OneOrMany::Many(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, f)| named(f, format!("{stem}[{i}]")))
            .collect(),
    })
}

/// The WIT values of a fixture's call, for a policy of one kind.
#[derive(Debug, Clone)]
pub enum CallInput {
    /// `select(req, candidates)`.
    Selection {
        req: policy::RequestInfo,
        candidates: Vec<policy::Candidate>,
    },
    /// `on-outcome(outcome, candidate)`.
    Cooldown {
        outcome: policy::Outcome,
        candidate: policy::Candidate,
    },
    /// `next(req, failed, tried, remaining)`.
    Fallback {
        req: policy::RequestInfo,
        failed: policy::Outcome,
        tried: Vec<policy::Candidate>,
        remaining: Vec<policy::Candidate>,
    },
}

impl NamedFixture {
    /// The call it describes for a policy of `kind`.
    pub fn input(&self, kind: PolicyKind) -> Result<CallInput, FixtureError> {
        let f = &self.fixture;
        let missing = |field| FixtureError::Missing {
            name: self.name.clone(),
            kind,
            field,
        };
        Ok(match kind {
            PolicyKind::Selection => CallInput::Selection {
                req: request(&f.request),
                candidates: candidates(f.candidates.as_ref().ok_or_else(|| missing("candidates"))?),
            },
            PolicyKind::Cooldown => {
                let c = f.candidate.as_ref().ok_or_else(|| missing("candidate"))?;
                let o = f.outcome.as_ref().ok_or_else(|| missing("outcome"))?;
                CallInput::Cooldown {
                    outcome: outcome(o, &c.deployment, f.now_ms),
                    candidate: candidate(c, 0),
                }
            }
            PolicyKind::Fallback => {
                let tried = candidates(f.tried.as_ref().ok_or_else(|| missing("tried"))?);
                let remaining =
                    candidates(f.remaining.as_ref().ok_or_else(|| missing("remaining"))?);
                let o = f.failed.as_ref().ok_or_else(|| missing("failed"))?;
                let last = tried.last().map_or("", |c| c.deployment.as_str());
                CallInput::Fallback {
                    req: request(&f.request),
                    failed: outcome(o, last, f.now_ms),
                    tried,
                    remaining,
                }
            }
        })
    }

    /// Where its deployments run, as `host.describe` answers during the
    /// call: every deployment the fixture names, in any of its lists.
    pub fn deployments(&self) -> DeploymentTable {
        let f = &self.fixture;
        let lists = [&f.candidates, &f.tried, &f.remaining];
        let all = lists
            .into_iter()
            .flatten()
            .flatten()
            .chain(f.candidate.as_ref());
        DeploymentTable::new(all.map(|c| {
            (
                c.deployment.clone(),
                policy::DeploymentInfo {
                    model_id: c.model_id.clone(),
                    region: c.region.clone(),
                    account: c.account.clone(),
                },
            )
        }))
    }

    /// The ids a returned index list stands for, in `input`'s list.
    pub fn order_ids(input: &CallInput, order: &[usize]) -> Vec<String> {
        let list = match input {
            CallInput::Selection { candidates, .. } => candidates,
            CallInput::Fallback { remaining, .. } => remaining,
            CallInput::Cooldown { .. } => return Vec::new(),
        };
        order.iter().map(|&i| list[i].deployment.clone()).collect()
    }
}

fn request(r: &RequestFixture) -> policy::RequestInfo {
    policy::RequestInfo {
        request_id: r.request_id.clone(),
        user: r.user.clone(),
        model_group: r.model_group.clone(),
        attempt: r.attempt,
        sequence: r.sequence,
        estimated_tokens: r.estimated_tokens,
        previous_deployment: r.previous_deployment.clone(),
        user_last_success: r.user_last_success.as_ref().map(|l| policy::LastSuccess {
            deployment: l.deployment.clone(),
            at_ms: l.at_ms,
        }),
    }
}

fn candidates(list: &[CandidateFixture]) -> Vec<policy::Candidate> {
    list.iter()
        .enumerate()
        .map(|(i, c)| candidate(c, i))
        .collect()
}

fn candidate(c: &CandidateFixture, position: usize) -> policy::Candidate {
    policy::Candidate {
        deployment: c.deployment.clone(),
        priority: c.priority.unwrap_or(position as u32 + 1),
        weight: c.weight,
        in_flight: c.in_flight,
        cooldown_remaining_ms: c.cooldown_remaining_ms,
        recent_throttles: c.recent_throttles,
        last_used_ms: c.last_used_ms,
        last_throttle_ms: c.last_throttle_ms,
        quota_used_permille: c.quota_used_permille,
        success_permille: c.success_permille,
        latency_ewma_ms: c.latency_ewma_ms,
        circuit: match c.circuit {
            CircuitFixture::Closed => policy::Circuit::Closed,
            CircuitFixture::Open => policy::Circuit::Open,
            CircuitFixture::HalfOpen => policy::Circuit::HalfOpen,
        },
    }
}

fn outcome(o: &OutcomeFixture, default_deployment: &str, now_ms: u64) -> policy::Outcome {
    policy::Outcome {
        deployment: o
            .deployment
            .clone()
            .unwrap_or_else(|| default_deployment.to_owned()),
        kind: match o.kind {
            OutcomeKindFixture::Success => policy::OutcomeKind::Success,
            OutcomeKindFixture::Throttled => policy::OutcomeKind::Throttled,
            OutcomeKindFixture::Unavailable => policy::OutcomeKind::Unavailable,
            OutcomeKindFixture::Timeout => policy::OutcomeKind::Timeout,
            OutcomeKindFixture::ClientError => policy::OutcomeKind::ClientError,
            OutcomeKindFixture::ServerError => policy::OutcomeKind::ServerError,
        },
        latency_ms: o.latency_ms,
        retry_after_ms: o.retry_after_ms,
        at_ms: o.at_ms.unwrap_or(now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_diff_names_the_first_difference() {
        let want = Decision::Order(vec!["a".into(), "b".into()]);
        let got = Decision::Order(vec!["b".into()]);
        let lines = want.diff(&got);
        assert_eq!(lines[0], "- expected: [a, b]");
        assert_eq!(lines[1], "+ actual:   [b]");
        assert!(
            lines[2].contains("position 1: expected a, got b"),
            "{lines:?}"
        );
        assert!(want.diff(&want).is_empty());
    }

    #[test]
    fn kv_values_are_text_or_hex() {
        assert_eq!(KvValue::Text("ab".into()).bytes().unwrap(), b"ab");
        assert_eq!(
            KvValue::Hex {
                hex: "20f4 0e00".into()
            }
            .bytes()
            .unwrap(),
            [0x20, 0xf4, 0x0e, 0]
        );
        assert!(KvValue::Hex { hex: "abc".into() }.bytes().is_err());
        assert!(KvValue::Hex { hex: "zz".into() }.bytes().is_err());
    }

    #[test]
    fn a_cooldown_diff_names_the_field() {
        let want = Decision::Cooldown {
            cooldown_ms: 10_000,
            clear_history: false,
        };
        let got = Decision::Cooldown {
            cooldown_ms: 30_000,
            clear_history: false,
        };
        assert_eq!(
            want.diff(&got),
            [
                "- expected cooldown_ms:   10000",
                "+ actual cooldown_ms:     30000"
            ]
        );
    }

    #[test]
    fn defaults_make_a_healthy_candidate_ranked_by_position() {
        let f: Fixture = serde_json::from_str(
            r#"{"candidates": [{"deployment": "a"}, {"deployment": "b", "circuit": "half_open"}]}"#,
        )
        .unwrap();
        let named = NamedFixture {
            name: "n".into(),
            path: "n.json".into(),
            fixture: f,
        };
        let CallInput::Selection { candidates, req } = named.input(PolicyKind::Selection).unwrap()
        else {
            panic!("a selection input");
        };
        assert_eq!(req.request_id, "fixture");
        assert_eq!(candidates[0].priority, 1);
        assert_eq!(candidates[1].priority, 2);
        assert_eq!(candidates[1].circuit, policy::Circuit::HalfOpen);
        assert_eq!(candidates[0].success_permille, 1000);
        assert!(matches!(
            named.input(PolicyKind::Cooldown),
            Err(FixtureError::Missing {
                field: "candidate",
                ..
            })
        ));
    }
}
