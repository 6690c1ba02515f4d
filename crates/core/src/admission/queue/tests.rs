//! Unit tests of the parent module.

use super::*;
use std::time::Duration;

fn queue(max_concurrent: u32, max_per_user: u32, max_queued: u32) -> FairQueue {
    FairQueue::new(QueueConfig {
        max_concurrent,
        max_per_user,
        max_queued,
        max_queued_per_user: max_queued,
    })
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Queues `n` requests of `user` and returns the tasks, each yielding
/// its permit; gives them a turn so they are queued in order.
async fn enqueue(
    q: &FairQueue,
    user: &'static str,
    priority: i32,
    n: usize,
    order: &Arc<Mutex<Vec<&'static str>>>,
) -> Vec<tokio::task::JoinHandle<Permit>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (q, order) = (q.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = q.admit(Some(user), priority, far()).await.unwrap();
            order.lock().unwrap().push(user);
            permit
        }));
        tokio::task::yield_now().await;
    }
    tasks
}

#[tokio::test(start_paused = true)]
async fn a_user_with_one_request_is_not_stuck_behind_one_with_ten() {
    let q = queue(1, 2, 100);
    let blocker = q.admit(Some("blocker"), 0, far()).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = enqueue(&q, "a", 0, 10, &order).await;
    tasks.extend(enqueue(&q, "b", 0, 1, &order).await);
    drop(blocker);
    // Serve one at a time: each finished request frees the next dispatch.
    for _ in 0..11 {
        let mut finished = None;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            finished = tasks.iter().position(|t| t.is_finished());
            if finished.is_some() {
                break;
            }
        }
        let served = order.lock().unwrap().len();
        let idx = finished.expect("one was dispatched");
        let permit = tasks.remove(idx).await.unwrap();
        assert_eq!(order.lock().unwrap().len(), served);
        drop(permit);
    }
    let order = order.lock().unwrap().clone();
    let b_at = order.iter().position(|&u| u == "b").unwrap();
    assert!(
        b_at < 2,
        "b served within the first 2 dispatches: {order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn higher_priority_goes_first() {
    let q = queue(1, 4, 100);
    let blocker = q.admit(Some("x"), 0, far()).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let low = enqueue(&q, "low", 0, 1, &order).await;
    let high = enqueue(&q, "high", 5, 1, &order).await;
    drop(blocker);
    let permit = high.into_iter().next().unwrap().await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["high"]);
    drop(permit);
    drop(low.into_iter().next().unwrap().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_user_runs_at_most_its_cap() {
    let q = queue(10, 2, 100);
    let p1 = q.admit(Some("a"), 0, far()).await.unwrap();
    let _p2 = q.admit(Some("a"), 0, far()).await.unwrap();
    let third = tokio::spawn({
        let q = q.clone();
        async move { q.admit(Some("a"), 0, far()).await }
    });
    tokio::task::yield_now().await;
    assert!(!third.is_finished(), "a third waits");
    // Another user is not held back by a's cap.
    let _other = q.admit(Some("b"), 0, far()).await.unwrap();
    let stats = q.stats();
    assert_eq!((stats.running, stats.queued), (3, 1));
    drop(p1);
    assert!(third.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn requests_of_no_user_are_not_held_to_the_per_user_cap() {
    let q = queue(3, 1, 10);
    let _a = q.admit(None, 0, far()).await.unwrap();
    let _b = q.admit(None, 0, far()).await.unwrap();
    let _c = q.admit(None, 0, far()).await.unwrap();
    assert_eq!(q.stats().running, 3);
    let d = q
        .admit(None, 0, Instant::now() + Duration::from_secs(1))
        .await;
    assert!(d.is_err(), "the global cap still holds");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let q = queue(1, 1, 2);
    let _running = q.admit(Some("a"), 0, far()).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let _waiting = enqueue(&q, "b", 0, 2, &order).await;
    let started = Instant::now();
    let refused = q.admit(Some("c"), 0, far()).await;
    assert_eq!(refused.unwrap_err(), AdmitError::QueueFull { queued: 2 });
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_in_the_queue_ends_the_wait_and_frees_its_place() {
    let q = queue(1, 1, 10);
    let running = q.admit(Some("a"), 0, far()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let waited = q.admit(Some("b"), 0, deadline).await;
    assert_eq!(
        waited.unwrap_err(),
        AdmitError::DeadlineInQueue { waited_ms: 5_000 }
    );
    assert_eq!(q.stats().queued, 0);
    drop(running);
    // The slot is free again for the next one.
    let next = q
        .admit(Some("c"), 0, Instant::now() + Duration::from_secs(1))
        .await;
    assert!(next.is_ok());
    assert_eq!(q.stats().running, 1);
}
