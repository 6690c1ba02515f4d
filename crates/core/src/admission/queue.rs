//! The fair queue in front of the router: a global concurrency cap, a cap per
//! user, and an order that shares capacity between users.
//!
//! A request waits here until it may start. Among the waiting requests whose
//! user is under its cap, the scheduler picks the highest priority first,
//! then the user with the fewest requests running, then by a fair-share tag:
//! each user's requests are numbered from the point the queue had reached
//! when the user arrived (start-time fair queuing), so a user with ten queued
//! and a user with one take turns instead of waiting in arrival order. The
//! queue is bounded: a request that finds it full is refused at once, with a
//! `retry-after`. A request whose deadline passes while it waits leaves with
//! a timeout and never reaches Bedrock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::state::UserPresence;
use tokio::time::Instant;

/// The fair-share name of requests that name no user.
pub const ANONYMOUS: &str = "anonymous";

/// The queue's limits.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests running at once, across all users.
    pub max_concurrent: u32,
    /// Requests running at once per user.
    pub max_per_user: u32,
    /// Requests waiting at once; beyond, 429 at once.
    pub max_queued: u32,
    /// Requests of one user waiting at once; beyond, 429 at once, so one
    /// user cannot fill the queue for everyone else. Requests that name no
    /// user share `max_queued`.
    pub max_queued_per_user: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 256,
            max_per_user: 2,
            max_queued: 1_024,
            max_queued_per_user: 64,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The queue is full.
    #[error("the queue is full ({queued} requests waiting)")]
    QueueFull {
        /// Requests waiting.
        queued: u32,
    },
    /// Its user already has as many requests waiting as one user may.
    #[error("this user already has {queued} requests waiting, as many as one user may")]
    UserQueueFull {
        /// The user's requests waiting.
        queued: u32,
    },
    /// The deadline passed while the request waited.
    #[error("the request's deadline passed after {waited_ms} ms in the queue")]
    DeadlineInQueue {
        /// How long it waited.
        waited_ms: u64,
    },
}

struct Waiter {
    id: u64,
    user: String,
    /// This request's user may run this many at once.
    user_cap: u32,
    priority: i32,
    tag: u64,
    enqueued: Instant,
    /// Its wait counts in the stats: a request coming back after waiting
    /// for a deployment's capacity was admitted once already.
    first_admission: bool,
    wake: oneshot::Sender<Permit>,
}

/// A user with requests running or waiting; forgotten when it has neither.
#[derive(Default)]
struct UserState {
    running: u32,
    queued: u32,
    /// The fair-share tag of this user's latest request.
    last_tag: u64,
}

struct State {
    running: u32,
    users: HashMap<String, UserState>,
    waiting: Vec<Waiter>,
    /// The tag of the latest request started: the queue's virtual time.
    virtual_time: u64,
    next_id: u64,
    /// Recent waits, for stats.
    waits: crate::admission::stats::WaitStats,
}

struct Inner {
    config: QueueConfig,
    state: Mutex<State>,
    /// Where per-user in-flight counts are shared with sibling instances.
    shared: Option<Arc<dyn UserPresence>>,
}

/// The fair queue. Cheap to clone.
#[derive(Clone)]
pub struct FairQueue {
    inner: Arc<Inner>,
}

/// The right to run, held until the request's answer is delivered.
pub struct Permit {
    /// `None` once the slot was given back another way.
    inner: Option<Arc<Inner>>,
    user: String,
    user_cap: u32,
    priority: i32,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("user", &self.user).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let mut state = inner.lock();
        inner.release(&mut state, &self.user);
        inner.dispatch(&mut state);
    }
}

impl Permit {
    /// Gives the slot back while `wait` runs (a request waiting for a
    /// deployment's capacity must not hold a slot another model group's
    /// request could use), then queues again for one, until `deadline`.
    pub async fn step_aside_while<T>(
        &mut self,
        wait: impl std::future::Future<Output = T>,
        deadline: Instant,
    ) -> Result<T, AdmitError> {
        let Some(inner) = self.inner.take() else {
            return Ok(wait.await);
        };
        {
            let mut state = inner.lock();
            inner.release(&mut state, &self.user);
            inner.dispatch(&mut state);
        }
        let out = wait.await;
        let queue = FairQueue { inner };
        *self = queue
            .enqueue(&self.user, self.user_cap, self.priority, deadline, false)
            .await?;
        Ok(out)
    }
}

/// One user's line in the queue stats.
#[derive(Debug, Clone, Serialize)]
pub struct UserQueueStats {
    pub user: String,
    pub running: u32,
    pub queued: u32,
    /// How long its oldest waiting request has waited, in ms.
    pub oldest_wait_ms: u64,
}

/// What the queue looks like now.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub running: u32,
    pub queued: u32,
    pub max_concurrent: u32,
    pub max_per_user: u32,
    pub max_queued: u32,
    pub max_queued_per_user: u32,
    /// User entries the queue keeps: one a user with requests running or
    /// waiting, none for a user who has left.
    pub tracked_users: usize,
    pub users: Vec<UserQueueStats>,
    /// Waits of the requests admitted recently, in ms.
    pub wait_ms: crate::admission::stats::WaitSummary,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("queue state poisoned")
    }

    /// Tells the sibling instances how many of `user`'s requests run here.
    fn report(&self, user: &str, running: u32) {
        if let (Some(shared), false) = (&self.shared, user == ANONYMOUS) {
            shared.user_running(user, running);
        }
    }

    /// Requests of `user` running on sibling instances, as last seen.
    fn elsewhere(&self, user: &str) -> u32 {
        match (&self.shared, user == ANONYMOUS) {
            (Some(shared), false) => shared.running_elsewhere(user),
            _ => 0,
        }
    }

    /// Gives back one running slot of `user`.
    fn release(&self, state: &mut State, user: &str) {
        state.running -= 1;
        if let Some(u) = state.users.get_mut(user) {
            u.running -= 1;
            self.report(user, u.running);
        }
        forget_if_idle(state, user);
    }

    /// Starts as many waiting requests as the caps allow, best first.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while state.running < self.config.max_concurrent {
            let best = state
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    let here = state.users.get(&w.user).map_or(0, |u| u.running);
                    here + self.elsewhere(&w.user) < w.user_cap
                })
                .min_by_key(|(_, w)| {
                    let running = state.users.get(&w.user).map_or(0, |u| u.running);
                    (std::cmp::Reverse(w.priority), running, w.tag, w.id)
                })
                .map(|(i, _)| i);
            let Some(i) = best else {
                return;
            };
            let waiter = state.waiting.swap_remove(i);
            state.running += 1;
            // A waiting request's user always has an entry.
            if let Some(user) = state.users.get_mut(&waiter.user) {
                user.running += 1;
                user.queued -= 1;
                self.report(&waiter.user, user.running);
            }
            state.virtual_time = state.virtual_time.max(waiter.tag);
            if waiter.first_admission {
                state
                    .waits
                    .record(waiter.enqueued.elapsed().as_millis() as u64);
            }
            let permit = Permit {
                inner: Some(self.clone()),
                user: waiter.user,
                user_cap: waiter.user_cap,
                priority: waiter.priority,
            };
            // A waiter that gave up (deadline) has dropped its receiver: the
            // permit comes back, and its slot is freed here (its drop would
            // take the lock this function holds).
            if let Err(mut permit) = waiter.wake.send(permit) {
                permit.inner = None;
                self.release(state, &permit.user);
            }
        }
    }
}

impl FairQueue {
    /// An empty queue with `config`'s caps.
    pub fn new(config: QueueConfig) -> Self {
        Self::build(config, None)
    }

    /// An empty queue whose per-user caps count the requests running on
    /// every instance sharing `state`.
    pub fn shared(config: QueueConfig, state: Arc<dyn UserPresence>) -> Self {
        Self::build(config, Some(state))
    }

    /// Lets waiting requests re-check their caps (the siblings' counts changed).
    pub fn recheck(&self) {
        let mut state = self.inner.lock();
        self.inner.dispatch(&mut state);
    }

    fn build(config: QueueConfig, shared: Option<Arc<dyn UserPresence>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                shared,
                state: Mutex::new(State {
                    running: 0,
                    users: HashMap::new(),
                    waiting: Vec::new(),
                    virtual_time: 0,
                    next_id: 0,
                    waits: Default::default(),
                }),
            }),
        }
    }

    /// Waits for the right to run `user`'s request of `priority` (higher
    /// first), until `deadline`. Requests of no known user share one fair
    /// share ([`ANONYMOUS`]) without the per-user cap: an open gateway whose
    /// clients name no user must not run two requests at a time.
    pub async fn admit(
        &self,
        user: Option<&str>,
        priority: i32,
        deadline: Instant,
    ) -> Result<Permit, AdmitError> {
        self.admit_capped(user, None, priority, deadline).await
    }

    /// [`admit`](Self::admit), with the user's own cap of requests running
    /// at once instead of `max_per_user` (an API key's `max_concurrent`).
    pub async fn admit_capped(
        &self,
        user: Option<&str>,
        user_cap: Option<u32>,
        priority: i32,
        deadline: Instant,
    ) -> Result<Permit, AdmitError> {
        let (user, user_cap) = match user {
            Some(user) => (user, user_cap.unwrap_or(self.inner.config.max_per_user)),
            None => (ANONYMOUS, self.inner.config.max_concurrent),
        };
        self.enqueue(user, user_cap, priority, deadline, true).await
    }

    async fn enqueue(
        &self,
        user: &str,
        user_cap: u32,
        priority: i32,
        deadline: Instant,
        first_admission: bool,
    ) -> Result<Permit, AdmitError> {
        let config = &self.inner.config;
        let user_queue_cap = if user == ANONYMOUS {
            config.max_queued
        } else {
            config.max_queued_per_user
        };
        let enqueued = Instant::now();
        let (wake, woken) = oneshot::channel();
        let id = {
            let mut state = self.inner.lock();
            if state.waiting.len() as u32 >= config.max_queued {
                return Err(AdmitError::QueueFull {
                    queued: state.waiting.len() as u32,
                });
            }
            let user_queued = state.users.get(user).map_or(0, |u| u.queued);
            if user_queued >= user_queue_cap {
                return Err(AdmitError::UserQueueFull {
                    queued: user_queued,
                });
            }
            let id = state.next_id;
            state.next_id += 1;
            let virtual_time = state.virtual_time;
            let user_state = state.users.entry(user.to_owned()).or_default();
            let tag = user_state.last_tag.max(virtual_time) + 1;
            user_state.last_tag = tag;
            user_state.queued += 1;
            state.waiting.push(Waiter {
                id,
                user: user.to_owned(),
                user_cap,
                priority,
                tag,
                enqueued,
                first_admission,
                wake,
            });
            self.inner.dispatch(&mut state);
            id
        };
        // Leaves the queue with this future: at the deadline, and also when
        // the request is dropped (its client hung up), so nobody's place is
        // held for a request no one will read.
        let place = WaitingPlace {
            inner: &self.inner,
            id,
            user,
        };
        match tokio::time::timeout_at(deadline, woken).await {
            Ok(Ok(permit)) => {
                place.dispatched();
                Ok(permit)
            }
            Ok(Err(_)) => unreachable!("the queue drops a waiter's sender only after sending"),
            Err(_) => {
                drop(place);
                Err(AdmitError::DeadlineInQueue {
                    waited_ms: enqueued.elapsed().as_millis() as u64,
                })
            }
        }
    }

    /// The queue now. One pass over the users and one over the waiting
    /// requests, so a long queue of many users is cheap to look at.
    pub fn stats(&self) -> QueueStats {
        let state = self.inner.lock();
        let now = Instant::now();
        let mut oldest: HashMap<&str, Instant> = HashMap::with_capacity(state.users.len());
        for w in &state.waiting {
            let at = oldest.entry(w.user.as_str()).or_insert(w.enqueued);
            *at = (*at).min(w.enqueued);
        }
        let mut users: Vec<UserQueueStats> = state
            .users
            .iter()
            .filter(|(_, u)| u.running > 0 || u.queued > 0)
            .map(|(user, u)| UserQueueStats {
                user: user.clone(),
                running: u.running,
                queued: u.queued,
                oldest_wait_ms: oldest
                    .get(user.as_str())
                    .map_or(0, |at| now.duration_since(*at).as_millis() as u64),
            })
            .collect();
        let (running, queued, tracked_users, waits) = (
            state.running,
            state.waiting.len() as u32,
            state.users.len(),
            state.waits.summary(),
        );
        drop(state);
        users.sort_by(|a, b| a.user.cmp(&b.user));
        let config = &self.inner.config;
        QueueStats {
            running,
            queued,
            max_concurrent: config.max_concurrent,
            max_per_user: config.max_per_user,
            max_queued: config.max_queued,
            max_queued_per_user: config.max_queued_per_user,
            tracked_users,
            users,
            wait_ms: waits,
        }
    }

    /// How many users the queue keeps an entry for (those with requests
    /// running or waiting).
    pub fn users_tracked(&self) -> usize {
        self.inner.lock().users.len()
    }
}

/// A request's place among the waiting, given up when it is dropped
/// unless the request was dispatched first (then it is no longer there,
/// and the permit it was sent carries the slot).
struct WaitingPlace<'a> {
    inner: &'a Inner,
    id: u64,
    user: &'a str,
}

impl WaitingPlace<'_> {
    /// The request got its turn: dispatching took it off the list already.
    fn dispatched(self) {
        std::mem::forget(self);
    }
}

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        // Not `lock()`: a panic here while unwinding would abort.
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = state.waiting.iter().position(|w| w.id == self.id) {
            state.waiting.swap_remove(i);
            if let Some(u) = state.users.get_mut(self.user) {
                u.queued -= 1;
            }
            forget_if_idle(&mut state, self.user);
        }
    }
}

/// Drops `user`'s entry once it has nothing running or waiting, so the
/// queue's memory follows its load, not the number of names ever seen.
fn forget_if_idle(state: &mut State, user: &str) {
    if state
        .users
        .get(user)
        .is_some_and(|u| u.running == 0 && u.queued == 0)
    {
        state.users.remove(user);
    }
}

#[cfg(test)]
mod tests;
